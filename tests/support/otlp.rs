//! A real OTLP receiver for tests: gRPC (tonic, the collector's trace and
//! logs services) and HTTP/protobuf (axum), both collecting what arrives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// Everything the receiver got.
#[derive(Default, Clone)]
pub struct Received {
    pub spans: Arc<Mutex<Vec<Span>>>,
    pub logs: Arc<Mutex<Vec<LogRecord>>>,
    pub service_names: Arc<Mutex<Vec<String>>>,
}

impl Received {
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.lock().unwrap().clone()
    }

    fn add_traces(&self, req: ExportTraceServiceRequest) {
        for rs in req.resource_spans {
            if let Some(r) = &rs.resource {
                self.note_service(&r.attributes);
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
    }

    fn add_logs(&self, req: ExportLogsServiceRequest) {
        for rl in req.resource_logs {
            if let Some(r) = &rl.resource {
                self.note_service(&r.attributes);
            }
            for sl in rl.scope_logs {
                self.logs.lock().unwrap().extend(sl.log_records);
            }
        }
    }

    fn note_service(&self, attrs: &[KeyValue]) {
        if let Some(name) = attr_str(attrs, "service.name") {
            self.service_names.lock().unwrap().push(name);
        }
    }

    /// Waits until `done` holds, or fails after `deadline`.
    pub async fn wait_for(&self, what: &str, deadline: Duration, done: impl Fn(&Received) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}: {} spans, {} logs received",
                self.spans().len(),
                self.logs().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A string attribute's value.
pub fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::DoubleValue(d)) => Some(d.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        }
    })
}

/// A log record's body as text.
pub fn body_text(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.add_logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Lower-case hex of a trace or span id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts an OTLP/gRPC receiver on a loopback port.
pub async fn start_grpc() -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Grpc(received.clone())))
        .add_service(LogsServiceServer::new(Grpc(received.clone())));
    tokio::spawn(async move {
        router.serve_with_incoming(incoming).await.unwrap();
    });
    (addr, received)
}

/// Starts an OTLP/HTTP (protobuf) receiver on a loopback port, serving
/// `/v1/traces` and `/v1/logs`.
pub async fn start_http() -> (SocketAddr, Received) {
    start_http_at("127.0.0.1:0".parse().unwrap()).await
}

/// Starts an OTLP/HTTP (protobuf) receiver on `addr`.
pub async fn start_http_at(addr: SocketAddr) -> (SocketAddr, Received) {
    let received = Received::default();
    let traces = received.clone();
    let logs = received.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body).expect("protobuf traces");
                traces.add_traces(req);
                ExportTraceServiceResponse::default().encode_to_vec()
            }),
        )
        .route(
            "/v1/logs",
            axum::routing::post(move |body: Bytes| async move {
                let req = ExportLogsServiceRequest::decode(body).expect("protobuf logs");
                logs.add_logs(req);
                ExportLogsServiceResponse::default().encode_to_vec()
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// What an OTLP/HTTP metrics receiver got, one request each.
pub type MetricsReceived = Arc<Mutex<Vec<ExportMetricsServiceRequest>>>;

/// The path of Prometheus' OTLP receiver, which batch runs push to.
pub const PROMETHEUS_OTLP_METRICS_PATH: &str = "/api/v1/otlp/v1/metrics";

/// Starts an OTLP/HTTP (protobuf) metrics receiver on a loopback port at
/// [`PROMETHEUS_OTLP_METRICS_PATH`], as Prometheus' OTLP receiver takes them.
pub async fn start_metrics_http() -> (SocketAddr, MetricsReceived) {
    let received = MetricsReceived::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        PROMETHEUS_OTLP_METRICS_PATH,
        axum::routing::post(move |body: Bytes| async move {
            let request = ExportMetricsServiceRequest::decode(body).expect("protobuf metrics");
            store.lock().unwrap().push(request);
            ExportMetricsServiceResponse::default().encode_to_vec()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// Telemetry that exports spans over OTLP gRPC and logs over OTLP
/// HTTP/protobuf to `addr`, both protocols at once (the stack's own mix:
/// Jaeger over gRPC, Loki over HTTP).
pub fn export_to(addr: SocketAddr) -> pipelens::telemetry::TelemetryConfig {
    export_split(addr, addr)
}

/// Like [`export_to`], spans to the gRPC receiver at `grpc` and logs to the
/// HTTP one at `http`.
pub fn export_split(grpc: SocketAddr, http: SocketAddr) -> pipelens::telemetry::TelemetryConfig {
    use pipelens::telemetry::{OtlpTarget, Protocol, TelemetryConfig};
    TelemetryConfig {
        traces: Some(OtlpTarget {
            endpoint: format!("http://{grpc}"),
            protocol: Protocol::Grpc,
        }),
        logs: Some(OtlpTarget {
            endpoint: format!("http://{http}/v1/logs"),
            protocol: Protocol::HttpProtobuf,
        }),
        ..TelemetryConfig::default()
    }
}

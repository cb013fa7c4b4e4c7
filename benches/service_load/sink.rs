//! The OTLP endpoints a load run exports to: a collector that decodes and
//! counts what it receives (OTLP/HTTP protobuf on one port, OTLP gRPC on
//! another), one that refuses connections, and one that accepts TCP and
//! never answers.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

/// Items a [`Collector`] has decoded, by signal.
#[derive(Default)]
pub(crate) struct Received {
    /// Spans in every decoded trace export request.
    pub(crate) spans: AtomicU64,
    /// Log records in every decoded log export request.
    pub(crate) logs: AtomicU64,
    /// Requests whose body did not decode as OTLP protobuf.
    pub(crate) malformed: AtomicU64,
}

/// An OTLP receiver on loopback, OTLP/HTTP protobuf on one port and OTLP
/// gRPC on another, on a thread and runtime of its own, that decodes every
/// export request (as a collector's receiver does) and counts its items
/// into the same [`Received`]. It keeps nothing else, so memory stays flat
/// under any load.
pub(crate) struct Collector {
    /// Where it listens for OTLP/HTTP (`http://{addr}` is the OTLP
    /// endpoint).
    pub(crate) addr: SocketAddr,
    /// Where it listens for OTLP gRPC (`http://{grpc_addr}`).
    pub(crate) grpc_addr: SocketAddr,
    /// What it has decoded so far.
    pub(crate) received: Arc<Received>,
}

impl Collector {
    /// Starts a collector on `addr` (port 0 for any free port).
    pub(crate) fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let grpc = TcpListener::bind(SocketAddr::new(addr.ip(), 0))?;
        grpc.set_nonblocking(true)?;
        let grpc_addr = grpc.local_addr()?;
        let received = Arc::new(Received::default());
        let counts = Arc::clone(&received);
        thread::Builder::new()
            .name("otlp-collector".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("collector runtime");
                runtime.block_on(async move {
                    tokio::spawn(serve_grpc(grpc, Arc::clone(&counts)));
                    serve(listener, counts).await;
                });
            })?;
        Ok(Self {
            addr,
            grpc_addr,
            received,
        })
    }

    /// Spans and log records received so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.received.spans.load(Ordering::Relaxed),
            self.received.logs.load(Ordering::Relaxed),
        )
    }
}

async fn serve(listener: TcpListener, counts: Arc<Received>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("collector listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let counts = Arc::clone(&counts);
                async move { Ok::<_, hyper::Error>(receive(request, &counts).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The OTLP gRPC side: the trace and logs services, counting like
/// [`receive`] does.
async fn serve_grpc(listener: TcpListener, counts: Arc<Received>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("collector gRPC listener");
    let grpc = Grpc(counts);
    let served = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(grpc.clone()))
        .add_service(LogsServiceServer::new(grpc))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await;
    if let Err(e) = served {
        eprintln!("service_load: the OTLP gRPC collector stopped: {e}");
    }
}

/// The gRPC services: tonic decodes each request, this counts its items.
#[derive(Clone)]
struct Grpc(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .spans
            .fetch_add(span_count(request.get_ref()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0
            .logs
            .fetch_add(log_count(request.get_ref()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn span_count(request: &ExportTraceServiceRequest) -> u64 {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum()
}

fn log_count(request: &ExportLogsServiceRequest) -> u64 {
    request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len() as u64)
        .sum()
}

async fn receive(request: Request<Incoming>, counts: &Received) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let decoded = match path.as_str() {
        "/v1/traces" => ExportTraceServiceRequest::decode(body).map(|r| {
            counts.spans.fetch_add(span_count(&r), Ordering::Relaxed);
        }),
        "/v1/logs" => ExportLogsServiceRequest::decode(body).map(|r| {
            counts.logs.fetch_add(log_count(&r), Ordering::Relaxed);
        }),
        _ => return status(StatusCode::NOT_FOUND),
    };
    if decoded.is_err() {
        counts.malformed.fetch_add(1, Ordering::Relaxed);
        return status(StatusCode::BAD_REQUEST);
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// An address nothing listens on: connections to it are refused.
pub(crate) fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// An endpoint that accepts TCP connections, holds them open and never
/// reads or answers: exports hang until the exporter's own timeout.
pub(crate) struct Blackhole {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl Blackhole {
    /// Starts accepting on a free loopback port.
    pub(crate) fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let held = Arc::new(Mutex::new(Vec::new()));
        thread::Builder::new()
            .name("otlp-blackhole".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    held.lock().expect("held connections").push(stream);
                }
            })?;
        Ok(Self { addr })
    }
}

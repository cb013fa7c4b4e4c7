//! Spans and logs of a run arrive over OTLP/gRPC with the pipeline → stage →
//! model parent chain, the caller's trace id, and trace ids on log records.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_arrive_over_grpc() {
    support::export::spans_and_logs_arrive(pipelens::telemetry::Protocol::Grpc).await;
}

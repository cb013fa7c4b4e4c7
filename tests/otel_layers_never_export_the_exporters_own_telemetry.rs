//! With `RUST_LOG=trace`, the exporters' own HTTP and gRPC stacks and the
//! OTel crates log and open spans while they export. Those reach stdout but
//! never the OTLP span and log bridges (they would export themselves in a
//! loop). Here stdout and OTLP share one level filter, installed once for
//! the whole subscriber; `..._with_a_stdout_filter` checks the same with a
//! filter per layer.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_spans_and_events_reach_stdout_but_not_otlp() {
    support::export::exporters_stay_out_of_otlp(None).await;
}

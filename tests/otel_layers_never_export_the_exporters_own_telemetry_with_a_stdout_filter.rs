//! The exporters' own spans and events never reach OTLP when stdout has a
//! level filter of its own (`stdout_filter`, as the batch CLI sets), so
//! each layer filters for itself.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_spans_and_events_reach_stdout_but_not_otlp() {
    support::export::exporters_stay_out_of_otlp(Some("trace,axum=off,pipelens=trace")).await;
}

//! Ground truth under load: sentiment runs first (their ids kept), then
//! their truths posted open-loop at a fixed rate, each one's latency
//! measured from when it was due (so a slow answer cannot slow the rate).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::load::Outcome;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(client: &HttpClient, addr: SocketAddr, path: &str, body: String) -> (u16, String) {
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            (status, body)
        }
        Err(_) => (0, String::new()),
    }
}

/// Makes `n` sentiment runs over `connections` connections; their ids.
pub(crate) async fn runs(addr: SocketAddr, n: usize, connections: usize) -> Vec<String> {
    let client = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, next, ids) = (client.clone(), Arc::clone(&next), Arc::clone(&ids));
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let body = r#"{"text": "a wonderful, moving film"}"#.to_owned();
                    let (status, reply) =
                        post(&client, addr, "/v1/pipelines/sentiment/runs", body).await;
                    let id = serde_json::from_str::<serde_json::Value>(&reply)
                        .ok()
                        .and_then(|v| v["run_id"].as_str().map(str::to_owned));
                    if let (200, Some(id)) = (status, id) {
                        ids.lock().expect("ids").push(id);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("run task");
    }
    Arc::try_unwrap(ids)
        .expect("tasks done")
        .into_inner()
        .expect("ids")
}

/// Posts one truth per id at `rate` per second (open loop) until the ids
/// or `duration` run out.
pub(crate) async fn truths(
    addr: SocketAddr,
    ids: Vec<String>,
    rate: f64,
    duration: Duration,
) -> Outcome {
    let client = client();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let due = start + every * i as u32;
        if due - start >= duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (client, outcome) = (client.clone(), Arc::clone(&outcome));
        tasks.push(tokio::spawn(async move {
            let path = format!("/v1/pipelines/sentiment/runs/{id}/feedback");
            let (status, _) =
                post(&client, addr, &path, r#"{"label": "positive"}"#.to_owned()).await;
            let us = u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX);
            let mut o = outcome.lock().expect("outcome");
            match status {
                200 => o.latencies_us.push(us),
                0 => o.broken += 1,
                s => match o.failed.iter_mut().find(|(c, _)| *c == s) {
                    Some((_, n)) => *n += 1,
                    None => o.failed.push((s, 1)),
                },
            }
        }));
    }
    for task in tasks {
        task.await.expect("truth task");
    }
    let mut outcome = Arc::try_unwrap(outcome)
        .expect("tasks done")
        .into_inner()
        .expect("outcome");
    outcome.elapsed = start.elapsed();
    outcome
}

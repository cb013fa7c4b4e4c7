//! The `pipelens` binary itself: `run` plans a room file, bad flags, files and
//! variables are named in the error, and `serve` drains in-flight requests on
//! SIGTERM before exiting cleanly.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::service::{free_port, post_room, send, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

fn pipelens(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run pipelens");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_prints_the_result_line_of_a_room_file() {
    let dir = tempfile::tempdir().unwrap();
    let room = dir.path().join("room.json");
    std::fs::write(
        &room,
        r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = pipelens(&["run", "--input", room.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    let line: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is one JSON result line");
    assert_eq!(line["line"], 1);
    let report = &line["report"];
    assert_eq!(report["pipeline"], "ceiling-layout");
    assert_eq!(report["stages"].as_array().unwrap().len(), 2);
    assert!(!report["output"]["lights"].as_array().unwrap().is_empty());
    let trace_id = report["trace_id"].as_str().expect("a trace id by default");
    assert_eq!(trace_id.len(), 32);

    // OTEL_SDK_DISABLED turns spans off: same plan, no trace id.
    let (ok, stdout, stderr) = pipelens(
        &["run", "--input", room.to_str().unwrap()],
        &[("OTEL_SDK_DISABLED", "true")],
    );
    assert!(ok, "{stderr}");
    let untraced: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let untraced = &untraced["report"];
    assert!(untraced["trace_id"].is_null(), "{}", untraced["trace_id"]);
    assert_eq!(untraced["output"], report["output"]);
}

#[test]
fn bad_flags_files_and_variables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let bad_room = dir.path().join("bad.json");
    std::fs::write(&bad_room, r#"{"width": 0, "length": 8}"#).unwrap();
    // (arguments, environment, what the error must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["run", "--input", missing.to_str().unwrap()],
            vec![],
            vec!["--input", "nope.json"],
        ),
        (
            // The bad room itself is a result line naming `width` on stdout
            // (tests/batch_runs_stream_results_in_order.rs); the exit
            // status names the flag that made it fatal.
            vec!["run", "--input", bad_room.to_str().unwrap()],
            vec![],
            vec!["1 invalid", "--max-failure-ratio"],
        ),
        (
            vec!["serve", "--addr", "not-an-address"],
            vec![],
            vec!["--addr"],
        ),
        (
            vec!["loadgen", "--target", "localhost:8000", "--duration", "1"],
            vec![],
            vec!["--target"],
        ),
        (
            vec!["loadgen", "--bad-share", "2", "--duration", "1"],
            vec![],
            vec!["--bad-share"],
        ),
        (
            vec![
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--max-concurrent-runs",
                "0",
            ],
            vec![],
            vec!["--max-concurrent-runs"],
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0"],
            vec![("PIPELENS_RUN_QUEUE", "many")],
            vec!["--run-queue"],
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0"],
            vec![("PIPELENS_SHUTDOWN_GRACE_SECS", "-1")],
            vec!["--shutdown-grace-secs"],
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0"],
            vec![("PIPELENS_LOG_FORMAT", "xml")],
            vec!["PIPELENS_LOG_FORMAT"],
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0"],
            vec![("OTEL_TRACES_SAMPLER", "sometimes")],
            vec!["OTEL_TRACES_SAMPLER"],
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0"],
            vec![("PIPELENS_FAULTS", r#"{"light_dense": {"error_rate": 3}}"#)],
            vec!["PIPELENS_FAULTS", "light_dense.error_rate"],
        ),
    ];
    for (args, env, needles) in cases {
        let (ok, _, stderr) = pipelens(&args, &env);
        assert!(!ok, "{args:?} {env:?} must fail");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?} {env:?}: `{needle}` not in: {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.json");
    // Every run takes at least 800 ms, so one is surely in flight at SIGTERM.
    std::fs::write(&faults, r#"{"air_supply": {"latency_ms": 800}}"#).unwrap();
    let addr = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", &addr.to_string()])
        .env("PIPELENS_RUN_STORE", "memory")
        .env("PIPELENS_FAULTS_FILE", &faults)
        .env("PIPELENS_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    wait_for(
        "the service to be healthy",
        Duration::from_secs(20),
        async || {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
            let uri: hyper::Uri = format!("http://{addr}/health").parse().unwrap();
            matches!(client.get(uri).await, Ok(r) if r.status() == StatusCode::OK)
        },
    )
    .await;

    let in_flight =
        tokio::spawn(async move { post_room(addr, r#"{"width": 10, "length": 10}"#, &[]).await });
    wait_for(
        "the run to be in flight",
        Duration::from_secs(10),
        async || {
            send(addr, Method::GET, "/metrics", "", &[])
                .await
                .body
                .contains(r#"http_server_active_requests{http_request_method="POST"} 1"#)
        },
    )
    .await;
    // Log lines go to stdout through the batching writer, whose drops are
    // counted (none: the test reads stdout).
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    assert!(
        metrics.contains("\npipelens_log_lines_dropped_total 0\n"),
        "{metrics}"
    );

    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM not delivered");

    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight run finished: {}",
        reply.body
    );

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "pipelens did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{stdout}\n{stderr}");
    assert!(stdout.contains("shutdown signal received"), "{stdout}");
    assert!(
        stdout.contains(r#""message":"pipeline completed""#),
        "{stdout}"
    );
}

/// Starts `pipelens serve` on a free port with a slow air-supply model
/// (`latency_ms` per run) and `args`/`env` on top, and waits until it is
/// ready. Stderr is piped (read it once the process has exited).
async fn serve_slow(
    latency_ms: u64,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.json");
    std::fs::write(
        &faults,
        format!(r#"{{"air_supply": {{"latency_ms": {latency_ms}}}}}"#),
    )
    .unwrap();
    let addr = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--addr", &addr.to_string()])
        .env("PIPELENS_RUN_STORE", "memory")
        .args(args)
        .env("PIPELENS_FAULTS_FILE", &faults)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the service to be ready",
        Duration::from_secs(20),
        async || {
            support::service::try_send(addr, Method::GET, "/ready", "", &[])
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
        },
    )
    .await;
    (child, addr, dir)
}

/// Sends SIGTERM to `child` and waits at most `limit` for it to exit; its
/// exit status, how long it took and its stderr.
async fn terminate(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration, String) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < limit, "still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, took, stderr)
}

/// What one client request of the load saw.
struct Sent {
    started: Instant,
    finished: Instant,
    outcome: Result<(StatusCode, String), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_refuses_new_flushes_telemetry_and_exits_in_time() {
    let (collector, received) = support::otlp::start_http().await;
    let endpoint = format!("http://{collector}");
    // Every run takes at least 300 ms: many are in flight at SIGTERM.
    let (mut child, addr, _dir) = serve_slow(
        300,
        &["--shutdown-grace-secs", "10"],
        &[
            ("PIPELENS_LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            // No export before the shutdown flush: what arrives, it flushed.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;

    // Twelve clients, each sending one run after another on new
    // connections, until the service is gone.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    let outcome = support::service::try_send(
                        addr,
                        Method::POST,
                        &support::service::ceiling_route(),
                        r#"{"width": 10, "length": 10}"#,
                        &[("content-type", "application/json")],
                    )
                    .await
                    .map(|r| (r.status, r.body));
                    let refused = outcome.is_err();
                    sent.push(Sent {
                        started,
                        finished: Instant::now(),
                        outcome,
                    });
                    if refused {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let signalled = Instant::now();
    let (status, exited_after, stderr) = terminate(&mut child, Duration::from_secs(20)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        exited_after < Duration::from_secs(5),
        "took {exited_after:?}"
    );

    // In flight at SIGTERM: started before it, answered after it, all 200.
    let in_flight: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.started < signalled && s.finished > signalled)
        .collect();
    let finished: Vec<&Sent> = in_flight
        .iter()
        .copied()
        .filter(|s| matches!(&s.outcome, Ok((StatusCode::OK, _))))
        .collect();
    assert!(
        finished.len() >= 4,
        "only {} of {} requests in flight at SIGTERM finished",
        finished.len(),
        in_flight.len()
    );
    for s in &sent {
        if let Ok((status, body)) = &s.outcome {
            assert_eq!(*status, StatusCode::OK, "{body}");
        }
    }
    // Sent well after SIGTERM: refused, never served.
    let late: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.started > signalled + Duration::from_millis(200))
        .collect();
    assert!(!late.is_empty(), "no request was sent after SIGTERM");
    for s in &late {
        assert!(s.outcome.is_err(), "served after SIGTERM: {:?}", s.outcome);
    }

    // Flushed: every answered run's trace reached the collector, with its
    // one INFO log line, though the batch delay never came round.
    let answered: Vec<String> = sent
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .map(|(_, body)| {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            json["trace_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let traces: std::collections::HashSet<String> = received
        .spans()
        .iter()
        .filter(|s| s.name == "pipeline.run")
        .map(|s| support::otlp::hex(&s.trace_id))
        .collect();
    for trace_id in &answered {
        assert!(traces.contains(trace_id), "trace {trace_id} not flushed");
    }
    let completed = received
        .logs()
        .iter()
        .filter(|l| support::otlp::body_text(l) == "pipeline completed")
        .count();
    assert_eq!(
        completed,
        answered.len(),
        "one completion log per answered run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_grace_the_service_stops_without_the_run_and_exits_1() {
    let (mut child, addr, _dir) = serve_slow(5000, &["--shutdown-grace-secs", "0.5"], &[]).await;
    let slow = tokio::spawn(async move {
        support::service::try_send(
            addr,
            Method::POST,
            &support::service::ceiling_route(),
            r#"{"width": 10, "length": 10}"#,
            &[("content-type", "application/json")],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, stderr) = terminate(&mut child, Duration::from_secs(4)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("0.5 s after the shutdown signal"),
        "{stderr}"
    );
    assert!(
        slow.await.unwrap().is_err(),
        "the cut-off run got no answer"
    );
}

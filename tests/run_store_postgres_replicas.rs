//! Two `pipelens serve` replicas on one real PostgreSQL (Debian's 15, a
//! server of the test's own on loopback): ground truth reaches a run
//! whichever replica made it and whichever takes the truth, survives a
//! restart, is taken once when two replicas race, and a database that goes
//! away stops only feedback (503, retry) — never the runs — until it is
//! back, with no restart.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use pipelens::store::{RunStore, StoreConfig};
use support::postgres::{Postgres, PASSWORD};
use support::replica::Replica;
use support::service::{send, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_ground_truth_through_postgres() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let without_password = pg.url_without_password();
    let with_password = pg.url();
    // A takes the password from a file (a mounted Secret), B in the URL.
    let mut a = Replica::start(
        dir.path(),
        "a",
        &[
            ("PIPELENS_RUN_STORE", without_password.as_str()),
            (
                "PIPELENS_RUN_STORE_PASSWORD_FILE",
                password_file.to_str().unwrap(),
            ),
        ],
    )
    .await;
    let b = Replica::start(
        dir.path(),
        "b",
        &[("PIPELENS_RUN_STORE", with_password.as_str())],
    )
    .await;

    // A shadow's late answers join their stored run until it is judged.
    let direct = RunStore::open(&StoreConfig::postgres(with_password.clone()), None)
        .await
        .unwrap();
    support::late_answers::join_until_judged(&direct, 0xfeed).await;

    // Both say where their runs go.
    for replica in [&a, &b] {
        let store = replica.run_store().await;
        assert_eq!(store["backend"], "postgres", "{store}");
        assert_eq!(store["up"], true, "{store}");
    }

    // A run on A, its truth on B (right away: A may not have flushed yet).
    let run = a.run("a wonderful, moving film").await;
    let reply = b.feedback(&run, "positive").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["run_id"], run.as_str());
    assert_eq!(b.feedback_counted().await, 1.0, "counted once, by B");
    assert_eq!(a.feedback_counted().await, 0.0, "and not by A");
    // The same truth again, on A: taken already.
    let again = a.feedback(&run, "positive").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.json()["error"]["code"], "duplicate_feedback");

    // Two truths for one run posted to both replicas at once: one wins.
    for i in 0..5 {
        let run = b.run(&format!("dull and far too long, take {i}")).await;
        let (x, y) = tokio::join!(a.feedback(&run, "negative"), b.feedback(&run, "negative"));
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{} / {}",
            x.body,
            y.body
        );
    }
    let counted = a.feedback_counted().await + b.feedback_counted().await;
    assert_eq!(counted, 6.0, "every truth counted exactly once");

    // A restarts; a run it made before takes its truth after.
    let before = a.run("I loved every minute").await;
    a.stop().await;
    a.spawn().await;
    let reply = a.feedback(&before, "positive").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // The database goes away: runs go on, feedback says retry, the
    // service stays ready, the losses are counted, the listing says so.
    pg.stop();
    let during = a.run("still serving while the store is down").await;
    let reply = b.feedback(&during, "positive").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["error"]["code"], "store_unavailable");
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    let ready = send(b.addr, Method::GET, "/ready", "", &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let store = b.run_store().await;
    assert_eq!(store["up"], false, "{store}");
    wait_for(
        "A to count its failed write",
        Duration::from_secs(20),
        async || {
            a.metric(r#"pipelens_run_store_writes_total{outcome="failed""#)
                .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(a.metric("pipelens_run_store_up{").await, 0.0);

    // It comes back: new runs and their truth work again, no restart.
    pg.resume();
    wait_for(
        "a new run's truth to be taken",
        Duration::from_secs(30),
        async || {
            let run = a.run("back again, and wonderful").await;
            b.feedback(&run, "positive").await.status == StatusCode::OK
        },
    )
    .await;
    wait_for(
        "A to say the store is up",
        Duration::from_secs(10),
        async || a.metric("pipelens_run_store_up{").await == 1.0,
    )
    .await;
    assert!(
        a.metric(r#"pipelens_run_store_writes_total{outcome="written""#)
            .await
            >= 1.0
    );

    // The password shows in no log line of either replica.
    for replica in [&a, &b] {
        let logs = replica.logs();
        assert!(logs.contains("pipelens starting"), "{logs}");
        assert!(!logs.contains(PASSWORD), "the password leaked:\n{logs}");
    }
}

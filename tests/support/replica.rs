//! `pipelens serve` as a real process on a loopback port: a replica of the
//! service, started and stopped like a pod, talked to over HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use super::service::{free_port, send, try_send, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

/// A running `pipelens serve`.
pub struct Replica {
    pub addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Replica {
    /// Starts `pipelens serve` with `env` on top of a quiet default (no
    /// OTLP export), logging to a file in `dir`, and waits until it is ready.
    pub async fn start(dir: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        let mut replica = Self {
            addr: free_port(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            log: dir.join(format!("{name}.log")),
        };
        replica.spawn().await;
        replica
    }

    /// Starts the process (again, after [`Replica::stop`]) on the same port.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--addr", &self.addr.to_string()])
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("PIPELENS_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .env_remove("PIPELENS_RUN_STORE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(r) = try_send(self.addr, Method::GET, "/ready", "", &[]).await {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pipelens exited at start ({status}):\n{}", self.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pipelens not ready in 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (the run store's last batch is
    /// written on the way out).
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("not running");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit {status}:\n{}", self.logs());
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the sentiment pipeline on `text`; returns the run id.
    pub async fn run(&self, text: &str) -> String {
        let body = serde_json::json!({ "text": text }).to_string();
        let reply = send(
            self.addr,
            Method::POST,
            "/v1/pipelines/sentiment/runs",
            &body,
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["run_id"].as_str().unwrap().to_owned()
    }

    /// The sentiment pipeline's `run_store` as `GET /v1/pipelines` lists it.
    pub async fn run_store(&self) -> serde_json::Value {
        let listed = send(self.addr, Method::GET, "/v1/pipelines", "", &[])
            .await
            .json();
        listed["pipelines"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "sentiment"))
            .unwrap_or_else(|| panic!("no sentiment pipeline listed: {listed}"))["run_store"]
            .clone()
    }

    /// Posts the sentiment truth `label` for run `run_id`.
    pub async fn feedback(&self, run_id: &str, label: &str) -> Reply {
        let body = serde_json::json!({ "label": label }).to_string();
        send(
            self.addr,
            Method::POST,
            &format!("/v1/pipelines/sentiment/runs/{run_id}/feedback"),
            &body,
            &[("content-type", "application/json")],
        )
        .await
    }

    /// The value of the series of /metrics whose line starts with `series`
    /// (name and labels as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = send(self.addr, Method::GET, "/metrics", "", &[]).await.body;
        body.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Judged answers counted for the sentiment pipeline's served models.
    pub async fn feedback_counted(&self) -> f64 {
        self.metric("ml_pipeline_feedback_total{").await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! A real MLServer (from the pinned venv of `scripts/python-env`) on
//! loopback, serving the reference scikit-learn model of `models/sentiment/`
//! with the settings of `deploy/mlserver/`, stopped when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::python::venv_bin;

/// A running MLServer.
pub struct MlServer {
    child: Option<Child>,
    /// Its HTTP base URL, such as `http://127.0.0.1:41234`.
    pub base: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl MlServer {
    /// Starts MLServer and waits until `/v2/health/ready` answers 200;
    /// with `tracing`, it exports its spans over OTLP/gRPC there.
    pub async fn start(tracing: Option<SocketAddr>) -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let mut settings: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo.join("deploy/mlserver/settings.json")).unwrap(),
        )
        .unwrap();
        settings["host"] = "127.0.0.1".into();
        settings["http_port"] = http_port.into();
        settings["grpc_port"] = free_port().into();
        settings["metrics_port"] = free_port().into();
        if let Some(addr) = tracing {
            settings["tracing_server"] = addr.to_string().into();
        }
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).unwrap();
        let model_dir = dir.path().join("sentiment");
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::copy(
            repo.join("deploy/mlserver/sentiment/model-settings.json"),
            model_dir.join("model-settings.json"),
        )
        .unwrap();
        std::fs::copy(
            repo.join("models/sentiment/model.joblib"),
            model_dir.join("model.joblib"),
        )
        .unwrap();
        let mlserver = venv_bin().join("mlserver");
        let log = std::fs::File::create(dir.path().join("mlserver.log")).unwrap();
        let child = Command::new(&mlserver)
            .arg("start")
            .arg(dir.path())
            .current_dir(dir.path())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_SERVICE_NAME", "mlserver")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: run scripts/python-env (it installs MLServer from PyPI)",
                    mlserver.display()
                )
            });
        let server = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{http_port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if server.get("/v2/health/ready").await == Some(200) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "MLServer did not become ready in 90 s: {}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What MLServer printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mlserver.log")).unwrap_or_default()
    }

    /// The status of `GET {base}{path}`, or `None` when nothing answered.
    pub async fn get(&self, path: &str) -> Option<u16> {
        let url: hyper::Uri = format!("{}{path}", self.base).parse().unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<axum::body::Bytes>>();
        client.get(url).await.ok().map(|r| r.status().as_u16())
    }

    /// `POST {base}{path}` with an empty body; its status.
    pub async fn post(&self, path: &str) -> Option<u16> {
        let request = hyper::Request::post(format!("{}{path}", self.base))
            .body(http_body_util::Empty::<axum::body::Bytes>::new())
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<axum::body::Bytes>>();
        client
            .request(request)
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: while frozen,
    /// the kernel still accepts connections but nothing answers.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on the pid of our own child process.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A service under load: a child process started with its own environment,
//! its stdout drained through a pipe (as a container runtime reads it), its
//! CPU time and peak memory read from `/proc`.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started service process.
pub(crate) struct Service {
    child: Child,
    /// Where it serves HTTP.
    pub(crate) addr: SocketAddr,
    drained: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How to start one service.
pub(crate) struct Launch {
    /// Program and arguments.
    pub(crate) command: Vec<String>,
    /// Environment on top of a cleared one (PATH and HOME are kept).
    pub(crate) env: Vec<(String, String)>,
    /// Where it will listen.
    pub(crate) addr: SocketAddr,
}

impl Service {
    /// Starts the process and waits until `GET /ready` answers 200.
    pub(crate) fn start(launch: &Launch) -> Result<Self, String> {
        let mut command = Command::new(&launch.command[0]);
        command
            .args(&launch.command[1..])
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| Some((k, std::env::var(k).ok()?))),
            )
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", launch.command))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let drained = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = std::sync::Arc::clone(&drained);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut service = Self {
            child,
            addr: launch.addr,
            drained,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!("{:?} exited at start: {status}", launch.command));
            }
            if get(service.addr, "/ready").is_some_and(|(status, _)| status == 200) {
                return Ok(service);
            }
            if Instant::now() > deadline {
                service.stop();
                return Err(format!("{:?} not ready within 60 s", launch.command));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time the process has used.
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may
        // contain spaces: utime and stime are the 14th and 15th fields.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// Peak resident memory so far, in MiB (`VmHWM`).
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.status_number("VmHWM:") / 1024.0
    }

    /// Resident memory now, in MiB (`VmRSS`).
    pub(crate) fn rss_mib(&self) -> f64 {
        self.status_number("VmRSS:") / 1024.0
    }

    /// Resident anonymous memory (heap, stacks) now, in MiB (`RssAnon`):
    /// what grows when something leaks; file pages come and go.
    pub(crate) fn rss_anon_mib(&self) -> f64 {
        self.status_number("RssAnon:") / 1024.0
    }

    /// Threads the process runs now.
    pub(crate) fn threads(&self) -> f64 {
        self.status_number("Threads:")
    }

    fn status_number(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    }

    /// Bytes the process has written to stdout so far.
    pub(crate) fn stdout_bytes(&self) -> u64 {
        self.drained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The body of `GET /metrics`, empty if it does not answer.
    pub(crate) fn metrics(&self) -> String {
        get(self.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; the exit status and how long it
    /// took, or `None` if it had to be killed after `grace`.
    pub(crate) fn terminate(
        &mut self,
        grace: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        // SAFETY: kill with a child's pid and a valid signal number.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        while started.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        None
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A blocking `GET path` with `Connection: close`; the status and body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// A loopback address with a port that was free a moment ago.
pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// The sum of every sample of `metric` whose labels contain all of
/// `labels` (`name="value"` pairs) in a Prometheus text exposition.
pub(crate) fn metric_sum(exposition: &str, metric: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>()
        // An empty float sum is -0.0.
        + 0.0
}

/// Spans and log records the batch processors dropped, in a service's
/// exposition (`otel_sdk_processor_*_processed_total` with an `error_type`:
/// `queue_full`, the one reason the queue gate drops for).
pub(crate) fn items_dropped(exposition: &str) -> f64 {
    metric_sum(
        exposition,
        "otel_sdk_processor_span_processed_total",
        &["error_type="],
    ) + metric_sum(
        exposition,
        "otel_sdk_processor_log_processed_total",
        &["error_type="],
    )
}

/// Spans and log records lost in failed exports
/// (`otel_sdk_exporter_*_exported_total` with an `error_type`).
pub(crate) fn export_errors(exposition: &str) -> f64 {
    metric_sum(
        exposition,
        "otel_sdk_exporter_span_exported_total",
        &["error_type="],
    ) + metric_sum(
        exposition,
        "otel_sdk_exporter_log_exported_total",
        &["error_type="],
    )
}

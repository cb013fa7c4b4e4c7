//! A closed-loop HTTP/1.1 load generator in the manner of `wrk`: a fixed
//! number of keep-alive connections, each sending the next request as soon
//! as the last response arrived, with a hand-written request and a minimal
//! response parser so the generator costs as little CPU as possible (it
//! shares the machine with the service it measures).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What one load phase measured on the client side.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Latency of every 2xx response, in microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// Latency of every 503 (a refused request), in microseconds.
    pub(crate) refused_us: Vec<u32>,
    /// Responses with another status, by status code.
    pub(crate) failed: Vec<(u16, u64)>,
    /// Connections that broke (reset, closed, unparsable response).
    pub(crate) broken: u64,
    /// How long the phase ran.
    pub(crate) elapsed: Duration,
}

impl Outcome {
    /// Successful responses per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of successful latencies, in milliseconds.
    pub(crate) fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[rank]) / 1000.0
    }

    /// Responses that were not 2xx, plus broken connections.
    pub(crate) fn failures(&self) -> u64 {
        self.failed.iter().map(|(_, n)| n).sum::<u64>() + self.broken
    }

    /// Adds `other`'s responses to these (not its elapsed time).
    pub(crate) fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.refused_us.extend(other.refused_us);
        for (code, n) in other.failed {
            match self.failed.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.failed.push((code, n)),
            }
        }
        self.broken += other.broken;
    }
}

/// Sends `target`'s request over `connections` keep-alive connections for
/// `duration`, on the calling thread's runtime.
pub(crate) async fn run(
    addr: SocketAddr,
    target: Target<'_>,
    connections: usize,
    duration: Duration,
) -> Outcome {
    run_from(addr, target, connections, duration, Caller::Direct).await
}

/// What each request asks for: `POST path` with `headers` and `body`.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The route.
    pub(crate) path: &'a str,
    /// Header lines beside the content type, each ending in CRLF.
    pub(crate) headers: &'a str,
    /// The JSON body.
    pub(crate) body: &'a str,
}

/// Who sends the requests.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A client without tracing: no `traceparent`.
    Direct,
    /// A caller instrumented with an OpenTelemetry SDK and its default
    /// sampler (always on): every request carries a `traceparent` of a new
    /// trace, flagged sampled, and no `tracestate`.
    AlwaysOn,
}

/// [`run`], with requests sent as `caller` sends them.
pub(crate) async fn run_from(
    addr: SocketAddr,
    target: Target<'_>,
    connections: usize,
    duration: Duration,
    caller: Caller,
) -> Outcome {
    let Target {
        path,
        headers,
        body,
    } = target;
    let request = Request {
        head: format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n").into_bytes(),
        rest: format!(
            "{headers}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        caller,
    };
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let request = request.clone();
            tokio::spawn(connection(addr, request, deadline, i as u64))
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await.expect("load connection task"));
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// A request, split where a `traceparent` header goes.
#[derive(Clone)]
struct Request {
    head: Vec<u8>,
    rest: Vec<u8>,
    caller: Caller,
}

impl Request {
    /// Writes the next request into `out`, with a fresh trace id from
    /// `random` when the caller traces.
    fn write(&self, out: &mut Vec<u8>, random: &mut u64) {
        use std::io::Write as _;
        out.clear();
        out.extend_from_slice(&self.head);
        if self.caller == Caller::AlwaysOn {
            let (high, low, span) = (next(random), next(random), next(random));
            // Writing to a Vec cannot fail.
            let _ = write!(
                out,
                "traceparent: 00-{high:016x}{low:016x}-{:016x}-01\r\n",
                span | 1
            );
        }
        out.extend_from_slice(&self.rest);
    }
}

/// xorshift64*: cheap, and random enough for trace ids.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

async fn connection(addr: SocketAddr, request: Request, deadline: Instant, seed: u64) -> Outcome {
    let mut outcome = Outcome::default();
    let mut stream: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(4096);
    let mut bytes = Vec::with_capacity(512);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut random = (nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    while Instant::now() < deadline {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    s.set_nodelay(true).ok();
                    stream.insert(s)
                }
                Err(_) => {
                    outcome.broken += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        request.write(&mut bytes, &mut random);
        let sent = Instant::now();
        let response = exchange(s, &bytes, &mut buffer).await;
        match response {
            Some((status, keep_alive)) => {
                if (200..300).contains(&status) {
                    let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    outcome.latencies_us.push(us);
                } else {
                    if status == 503 {
                        let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        outcome.refused_us.push(us);
                    }
                    match outcome.failed.iter_mut().find(|(c, _)| *c == status) {
                        Some((_, n)) => *n += 1,
                        None => outcome.failed.push((status, 1)),
                    }
                }
                if !keep_alive {
                    stream = None;
                }
            }
            None => {
                outcome.broken += 1;
                stream = None;
            }
        }
    }
    outcome
}

/// Writes one request and reads its response; the status and whether the
/// connection stays open, or `None` if the connection broke.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> Option<(u16, bool)> {
    stream.write_all(request).await.ok()?;
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = find(buffer, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..head_end]).ok()?;
            let status = head.get(9..12)?.parse::<u16>().ok()?;
            let mut length = 0usize;
            let mut keep_alive = true;
            for line in head.split("\r\n").skip(1) {
                let (name, value) = line.split_once(':')?;
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok()?;
                } else if name.eq_ignore_ascii_case("connection") {
                    keep_alive = !value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    // Both services answer with a length; chunked bodies
                    // would need a parser this client does not carry.
                    return None;
                }
            }
            let total = head_end + 4 + length;
            while buffer.len() < total {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Some((status, keep_alive));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

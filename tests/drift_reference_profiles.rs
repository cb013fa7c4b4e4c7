//! A drift reference that means something: `pipelens profile` builds one
//! from a sample of rooms (numeric features at quantiles, the room's shape
//! by category share), `pipelens serve --drift-reference` compares live
//! traffic with it from the first run (no learning window, nothing lost on
//! a restart), and a broken profile stops start-up naming the flag.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A blocking HTTP/1.1 exchange with `Connection: close`: status and body.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

#[test]
fn a_profiled_reference_is_compared_with_live_traffic_from_the_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("offices.jsonl");
    let mut text = String::new();
    for i in 0..60u32 {
        text.push_str(&format!(
            "{{\"width\": {}, \"length\": {}}}\n",
            8 + i % 6,
            6 + i % 5
        ));
    }
    text.push_str("{\"width\": \"wide\"}\n");
    std::fs::write(&sample, text).unwrap();
    let reference = dir.path().join("reference.json");

    let out = Command::new(BIN)
        .args(["profile", "--input", sample.to_str().unwrap()])
        .args(["--out", reference.to_str().unwrap(), "--bins", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 61"),
        "the bad line is named: {stderr}"
    );
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    assert_eq!(profile["samples"], 60);
    let names: Vec<&str> = profile["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "room_width",
            "room_length",
            "obstacle_density",
            "room_shape"
        ]
    );
    // The categorical feature: shapes by share, no corridor among offices.
    let shapes = &profile["features"][3];
    assert!(shapes.get("edges").is_none(), "{shapes}");
    let categories: Vec<&str> = shapes["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(categories.contains(&"square"), "{shapes}");
    assert!(!categories.contains(&"corridor"), "{shapes}");
    for f in profile["features"].as_array().unwrap() {
        let total: u64 = f["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(total, 60, "{f}");
    }

    // Serve with it: a few long corridors read as drift at once, in their
    // width and in their shape.
    let addr = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", &addr.to_string()])
        .env("PIPELENS_RUN_STORE", "memory")
        .args(["--drift-reference", reference.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while http(addr, "GET", "/ready", "").map(|r| r.0) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let reply = http(
            addr,
            "POST",
            "/v1/pipelines/ceiling-layout/runs",
            r#"{"width": 90, "length": 10}"#,
        )
        .unwrap();
        assert_eq!(reply.0, 200, "{}", reply.1);
    }
    let psi = |metrics: &str, feature: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ml_feature_drift_psi{")
                    && l.contains(&format!("feature=\"{feature}\""))
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    let started = Instant::now();
    let (width, shape) = loop {
        let metrics = http(addr, "GET", "/metrics", "").unwrap().1;
        if let (Some(w), Some(s)) = (psi(&metrics, "room_width"), psi(&metrics, "room_shape")) {
            break (w, s);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no PSI published"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        width > 0.2,
        "corridors against an offices reference: {width}"
    );
    assert!(shape > 0.2, "a shape the reference never saw: {shape}");
}

#[test]
fn a_broken_profile_stops_start_up_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.json");
    std::fs::write(
        &reference,
        r#"{"samples": 1, "features": [{"name": "room_width", "edges": [5, 1], "counts": [1, 0, 0]}]}"#,
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("PIPELENS_RUN_STORE", "memory")
        .args(["--drift-reference", reference.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--drift-reference"), "{stderr}");
    assert!(stderr.contains("room_width"), "{stderr}");
}

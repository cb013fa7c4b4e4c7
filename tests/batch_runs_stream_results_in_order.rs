//! `pipelens run` over a batch: one result per line in input order, bad
//! lines reported by number without stopping the batch, a summary on
//! stderr, exit codes from `--max-failure-ratio` and `--fail-fast`, JSON
//! arrays and stdin, one trace per run, no progress bar or escape codes
//! when nobody watches, and a large file in bounded memory.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

/// Runs `pipelens run` with `args`, feeding `stdin`; exit success, stdout
/// lines as JSON, stderr.
fn run(args: &[&str], stdin: &str) -> (bool, Vec<serde_json::Value>, String) {
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROOMS: &str = concat!(
    r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#,
    "\n\n",
    "not json\n",
    r#"{"width": 0, "length": 3}"#,
    "\n",
    r#"{"width": 30, "length": 4}"#,
    "\n",
);

#[test]
fn results_come_in_input_order_with_bad_lines_named_and_a_summary() {
    let (ok, lines, stderr) = run(&["--input", "-", "--concurrency", "3"], ROOMS);
    assert!(!ok, "two bad lines fail the default --max-failure-ratio 0");
    let positions: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(positions, [1, 3, 4, 5], "blank line 2 skipped, order kept");
    assert_eq!(lines[0]["report"]["pipeline"], "ceiling-layout");
    assert!(!lines[0]["report"]["output"]["lights"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(lines[1]["error"]["code"], "malformed_json");
    assert_eq!(lines[2]["error"]["code"], "invalid_field");
    assert_eq!(lines[2]["error"]["field"], "width");
    assert!(lines[3]["report"].is_object());
    // Each run is a trace of its own.
    let traces: Vec<&str> = [&lines[0], &lines[3]]
        .iter()
        .map(|l| l["report"]["trace_id"].as_str().unwrap())
        .collect();
    assert_ne!(traces[0], traces[1]);
    assert!(
        stderr.contains("4 inputs: 2 succeeded, 2 failed (2 invalid, 0 failed runs)"),
        "{stderr}"
    );
    assert!(stderr.contains("run duration: p50"), "{stderr}");
    assert!(stderr.contains("champions of `lighting`:"), "{stderr}");
    assert!(
        stderr.contains("--max-failure-ratio"),
        "the error names the flag: {stderr}"
    );
    // Nobody watching: no bar redraws, no escape codes.
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );

    let (ok, _, stderr) = run(&["--input", "-", "--max-failure-ratio", "0.5"], ROOMS);
    assert!(ok, "2 of 4 failed is within 0.5: {stderr}");
}

#[test]
fn fail_fast_stops_at_the_first_failure() {
    let (ok, lines, stderr) = run(
        &["--input", "-", "--fail-fast", "--concurrency", "1"],
        ROOMS,
    );
    assert!(!ok);
    assert_eq!(lines.len(), 2, "stopped after line 3: {lines:?}");
    assert!(stderr.contains("--fail-fast"), "{stderr}");
}

#[test]
fn a_json_array_file_and_an_output_file_work_too() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rooms.json");
    std::fs::write(
        &input,
        r#"[{"width": 5, "length": 5}, {"width": 5, "length": 5, "colour": "red"}, {"width": 7, "length": 3}]"#,
    )
    .unwrap();
    let output = dir.path().join("results.jsonl");
    let (ok, stdout, stderr) = run(
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--max-failure-ratio",
            "0.4",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty(), "results went to --output");
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["line"], 2);
    assert_eq!(results[1]["error"]["field"], "colour");
    assert!(results[2]["report"].is_object());
}

#[test]
fn missing_input_and_bad_flags_are_named() {
    let (ok, _, stderr) = run(&["--input", "/nonexistent/rooms.jsonl"], "");
    assert!(!ok);
    assert!(
        stderr.contains("--input /nonexistent/rooms.jsonl"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["--input", "-", "--max-failure-ratio", "2"], "");
    assert!(!ok);
    assert!(stderr.contains("--max-failure-ratio"), "{stderr}");
}

#[test]
fn a_hundred_thousand_lines_stream_through_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let mut text = String::with_capacity(3 << 20);
    for i in 0..100_000u32 {
        if i % 10 == 0 {
            text.push_str(&format!(
                "{{\"width\": {}, \"length\": {}}}\n",
                2 + i % 5,
                2 + i % 7
            ));
        } else {
            text.push_str("{\"width\": \"wide\", \"length\": 3}\n");
        }
    }
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("out.jsonl");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["run", "--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .args(["--max-failure-ratio", "0.95"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads while it runs: the runs' WARN
        // lines would fill a pipe and block the process.
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak_kib = kib;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    let written = std::fs::metadata(&output).unwrap().len();
    let results = std::fs::read_to_string(&output).unwrap();
    let mut count = 0u64;
    for (i, line) in results.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["line"], i as u64 + 1);
        count += 1;
    }
    assert_eq!(count, 100_000);
    assert!(
        written > 20 << 20,
        "the results ({written} bytes) outweigh the bound below"
    );
    assert!(
        peak_kib > 0 && peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB: results or inputs are being held"
    );
}

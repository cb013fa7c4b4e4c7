//! `pipelens run --shard INDEX/COUNT` (or `--shards COUNT` with
//! `JOB_COMPLETION_INDEX`, as a Kubernetes Indexed Job sets it) runs the
//! inputs whose line number is INDEX modulo COUNT, keeping line numbers: a
//! 1000-line file run whole and as 4 shards gives the same set of results.
//! Bad values are errors naming the flag or the variable.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");
const LINES: u64 = 1000;

/// 1000 lines of rooms of many sizes, with bad lines and blank ones among
/// them.
fn rooms() -> String {
    (1..=LINES)
        .map(|n| match n {
            n if n % 97 == 0 => "not json".to_owned(),
            n if n % 89 == 0 => r#"{"width": 0, "length": 3}"#.to_owned(),
            n if n % 83 == 0 => String::new(),
            n => {
                let (w, l) = (3 + n % 17, 3 + (n / 17) % 13);
                json!({"width": w, "length": l, "obstacles": [{"x": 1, "y": 1}]}).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Runs `pipelens run` on `input` with `args` and `env`; the results by
/// line, without what differs between two runs of the same input (trace
/// ids, durations), and stderr.
fn run(input: &Path, args: &[&str], env: &[(&str, &str)]) -> (BTreeMap<u64, Value>, String) {
    let out = Command::new(BIN)
        .args(["run", "--input"])
        .arg(input)
        .args(["--max-failure-ratio", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("JOB_COMPLETION_INDEX")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    let mut results = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let n = v["line"].as_u64().unwrap();
        let kept = match v.get("report") {
            Some(report) => json!({
                "output": report["output"],
                "selected": report["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["selected_model"].clone())
                    .collect::<Vec<_>>(),
            }),
            None => json!({"code": v["error"]["code"], "field": v["error"]["field"]}),
        };
        assert!(results.insert(n, kept).is_none(), "line {n} twice");
    }
    (results, stderr)
}

/// Runs `pipelens run` expecting it to fail; its stderr.
fn refused(input: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(["run", "--input"])
        .arg(input)
        .args(args)
        .env_remove("JOB_COMPLETION_INDEX")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} {env:?} was accepted");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: no result before the check"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn four_shards_give_the_same_results_as_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rooms.jsonl");
    std::fs::write(&input, rooms()).unwrap();

    let (whole, _) = run(&input, &[], &[]);
    let blank = (1..=LINES)
        .filter(|n| n % 83 == 0 && n % 97 != 0 && n % 89 != 0)
        .count();
    assert_eq!(
        whole.len() as u64,
        LINES - blank as u64,
        "blank lines skipped"
    );
    assert!(whole.values().any(|v| v["code"] == "malformed_json"));
    assert!(whole.values().any(|v| v["code"] == "invalid_field"));

    let mut sharded = BTreeMap::new();
    for index in 0..4u64 {
        // Shards 0 and 1 from the flag, 2 and 3 as an Indexed Job runs them.
        let spec = format!("{index}/4");
        let index_env = index.to_string();
        let (results, stderr) = if index < 2 {
            run(&input, &["--shard", &spec], &[])
        } else {
            run(
                &input,
                &["--shards", "4"],
                &[("JOB_COMPLETION_INDEX", &index_env)],
            )
        };
        assert!(stderr.contains(&format!("shard {index}/4:")), "{stderr}");
        assert!(!results.is_empty());
        for n in results.keys() {
            assert_eq!(n % 4, index, "line {n} in shard {index}");
        }
        for (n, v) in results {
            assert!(sharded.insert(n, v).is_none(), "line {n} in two shards");
        }
    }
    assert_eq!(sharded, whole);
}

#[test]
fn bad_shard_values_name_the_flag_or_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rooms.jsonl");
    std::fs::write(&input, rooms()).unwrap();
    for (args, env, names) in [
        (
            &["--shard", "4/4"][..],
            &[][..],
            &["--shard", "INDEX/COUNT"][..],
        ),
        (&["--shard", "1/0"], &[], &["--shard"]),
        (&["--shard", "one/4"], &[], &["--shard"]),
        (&["--shards", "0"], &[], &["--shards"]),
        (
            &["--shards", "4"],
            &[],
            &["--shards 4", "JOB_COMPLETION_INDEX", "--shard INDEX/4"],
        ),
        (
            &["--shards", "4"],
            &[("JOB_COMPLETION_INDEX", "4")],
            &["JOB_COMPLETION_INDEX", "--shards 4"],
        ),
        (
            &["--shard", "1/4", "--shards", "4"],
            &[],
            &["--shard", "--shards"],
        ),
    ] {
        let stderr = refused(&input, args, env);
        for name in names {
            assert!(stderr.contains(name), "{args:?} {env:?}: {stderr}");
        }
    }
}

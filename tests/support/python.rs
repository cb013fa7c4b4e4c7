//! The pinned Python environment of `scripts/python-env` (onnxruntime,
//! scikit-learn, MLServer), made on first use, and the reference answers of
//! `scripts/models/reference.py`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The venv's `bin` directory, made by `scripts/python-env` if it is not
/// there. Fails the test, saying what to install, when it cannot be made.
pub fn venv_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-env");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/python-env failed: these tests need CPython 3.11 with pip and venv \
             (Debian: apt-get install python3 python3-venv python3-pip) and PyPI"
        );
        let python = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        python.parent().unwrap().to_owned()
    })
    .clone()
}

/// What `scripts/models/reference.py RUNTIME` answers for `texts`: the class
/// index and the probabilities of each.
pub fn reference(runtime: &str, texts: &[String]) -> (Vec<i64>, Vec<Vec<f64>>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/models/reference.py");
    let mut child = Command::new(venv_bin().join("python"))
        .arg(script)
        .arg(runtime)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference.py {runtime} failed");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels = answer["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let probabilities = answer["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect()
        })
        .collect();
    (labels, probabilities)
}

/// Test texts: every 11th review of the pool and some it does not hold.
pub fn texts() -> Vec<String> {
    let pool = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sentiment/reviews.tsv"),
    )
    .unwrap();
    let mut texts: Vec<String> = pool
        .lines()
        .skip(1)
        .step_by(11)
        .map(|line| line.split_once('\t').unwrap().1.to_owned())
        .collect();
    texts.extend(
        [
            "",
            "!!!",
            "Not bad at all, honestly",
            "I can't say it's great, it isn't",
            "THE KETTLE IS AMAZING",
            "terrible terrible terrible",
            "It arrived on Tuesday and it is blue",
            "Crème brûlée flavoured excellence",
            "no words",
            "'quoted' words and don't",
        ]
        .map(str::to_owned),
    );
    texts
}

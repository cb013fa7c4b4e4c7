//! `pipelens run` draws its progress bar (indicatif) with the rate and ETA
//! only when stderr is a terminal and the results do not go to a pipe;
//! when results and bar share the terminal, no result line is broken by
//! the bar; with results piped, stderr holds no bar and no escape code.
//! The terminal is a real pseudo-terminal (openpty).

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");
const ROOMS: usize = 3000;

/// A pseudo-terminal of 120 columns: (the side a test reads, the side the
/// child writes to).
fn pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the out-pointers; the
    // name and termios pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Everything written to the terminal until every writer closed it.
fn drain(mut master: File) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                // Linux answers EIO once the last writer has gone.
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    })
}

fn input() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rooms.jsonl");
    let rooms: String = (0..ROOMS)
        .map(|i| format!("{{\"width\": {}, \"length\": {}}}\n", 4 + i % 20, 4 + i % 9))
        .collect();
    std::fs::write(&path, rooms).unwrap();
    (dir, path)
}

fn pipelens(input: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["run", "--input"])
        .arg(input)
        .env_remove("RUST_LOG")
        .env("TERM", "xterm");
    command
}

#[test]
fn the_bar_shows_rate_and_eta_on_a_terminal_while_results_go_to_a_file() {
    let (dir, input) = input();
    let output = dir.path().join("results.jsonl");
    let (master, slave) = pty();
    let reader = drain(master);
    let status = pipelens(&input)
        .arg("--output")
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .status()
        .unwrap();
    let terminal = reader.join().unwrap();
    assert!(status.success(), "{terminal}");
    assert!(terminal.contains("ETA "), "no ETA: {terminal:?}");
    assert!(terminal.contains("/s"), "no rate: {terminal:?}");
    assert!(terminal.contains(" done, "), "no count: {terminal:?}");
    assert!(terminal.contains("[#"), "no bar: {terminal:?}");
    assert!(
        terminal.contains(&format!("{ROOMS} inputs")),
        "{terminal:?}"
    );
    let results = std::fs::read_to_string(&output).unwrap();
    assert_eq!(results.lines().count(), ROOMS);
}

#[test]
fn results_sharing_the_terminal_with_the_bar_are_never_broken() {
    let (_dir, input) = input();
    let (master, slave) = pty();
    let reader = drain(master);
    let stdout = slave.try_clone().unwrap();
    let status = pipelens(&input)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(slave))
        .status()
        .unwrap();
    let terminal = reader.join().unwrap();
    assert!(status.success(), "{terminal}");
    assert!(terminal.contains("ETA "), "no bar: {terminal:?}");
    // Each result is a whole line; what the bar drew before it on the same
    // line was cleared first (it ends at the last erase-line code or `\r`).
    let mut results = 0;
    for line in terminal.split('\n') {
        let line = line.trim_end_matches('\r');
        let shown = line.rsplit_once("\x1b[2K").map_or(line, |(_, after)| after);
        let shown = shown.rsplit_once('\r').map_or(shown, |(_, after)| after);
        if !shown.starts_with("{\"line\"") {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(shown)
            .unwrap_or_else(|e| panic!("a broken result line ({e}): {shown:?}"));
        assert!(value["report"].is_object(), "{shown}");
        results += 1;
    }
    assert_eq!(results, ROOMS, "every result shown whole");
}

#[test]
fn with_results_piped_stderr_has_no_bar_and_no_escape_code() {
    let (_dir, input) = input();
    let (master, slave) = pty();
    let reader = drain(master);
    let out = pipelens(&input)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .output()
        .unwrap();
    let terminal = reader.join().unwrap();
    assert!(out.status.success(), "{terminal}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), ROOMS);
    assert!(
        terminal.contains(&format!("{ROOMS} inputs")),
        "{terminal:?}"
    );
    assert!(
        !terminal.contains("ETA") && !terminal.contains('\x1b'),
        "{terminal:?}"
    );
}

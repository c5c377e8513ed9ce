//! The real `synproxy-agent` binary logging for the systemd journal: syslog
//! priority prefixes per level and no timestamp with `--log-format journald`,
//! and that format chosen by itself when stderr is the stream systemd named in
//! `JOURNAL_STREAM`.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_synproxy-agent");
const HEADER: &str =
    "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n";

/// The agent reading /proc only, its stderr into `stderr_file`, no inherited
/// log settings.
fn agent(args: &[&str], stderr_file: &Path) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.args(args)
        .env_remove("HOST_PROC")
        .env_remove("JOURNAL_STREAM")
        .env_remove("SYNPROXY_AGENT_LOG_FORMAT")
        .env_remove("SYNPROXY_AGENT_LOG_LEVEL")
        .env("SYNPROXY_AGENT_NO_EBPF", "true")
        // The fake proc trees hold the SYNPROXY file only, and the tests
        // count its lines.
        .env("SYNPROXY_AGENT_NO_NSTAT", "true")
        .env("SYNPROXY_AGENT_NO_CONNTRACK", "true")
        .env("SYNPROXY_AGENT_NO_VERDICT", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr_file).unwrap());
    cmd
}

/// Polls the stderr file until it holds `needle` (generous deadline).
fn wait_for(stderr_file: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(stderr_file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in stderr: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--once` with `--prometheus-listen`: one error line, exit 2, at once.
const USAGE_ERROR: &[&str] = &["--once", "--prometheus-listen", "127.0.0.1:1"];

#[test]
fn journald_format_prefixes_each_level_with_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    fs::create_dir_all(proc.join("net/stat")).unwrap();
    let err = dir.path().join("stderr");
    let proc_arg = proc.to_str().unwrap();
    // The counters' file is missing at first: a warning, then readable: info.
    let mut child = agent(
        &[
            "--interval",
            "50ms",
            "--proc-root",
            proc_arg,
            "--log-format",
            "journald",
            "--log-level",
            "debug",
        ],
        &err,
    )
    .spawn()
    .unwrap();
    wait_for(&err, "retrying every interval");
    fs::write(
        proc.join("net/stat/synproxy"),
        format!("{HEADER}00000000\t00000001\t00000000\t00000001\t00000000\t00000000\n"),
    )
    .unwrap();
    wait_for(&err, "readable again");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let out = agent(
        &[USAGE_ERROR, &["--log-format", "journald"]].concat(),
        &dir.path().join("stderr2"),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = fs::read_to_string(&err).unwrap()
        + &fs::read_to_string(dir.path().join("stderr2")).unwrap();

    for (prefix, message) in [
        ("<3>", "--prometheus-listen 127.0.0.1:1: not with --once"),
        ("<4>", "retrying every interval"),
        ("<6>", "synproxy counters readable again"),
        ("<6>", "SIGTERM, exiting"),
        ("<7>", "capabilities dropped"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no line with {message:?}: {text}"));
        assert!(line.starts_with(prefix), "{prefix} {message:?}: {text}");
    }
    for line in text.lines() {
        let body = line
            .strip_prefix("<3>")
            .or_else(|| line.strip_prefix("<4>"))
            .or_else(|| line.strip_prefix("<6>"))
            .or_else(|| line.strip_prefix("<7>"))
            .unwrap_or_else(|| panic!("line without a priority: {line:?}"));
        // No timestamp: the journal stamps each line itself.
        assert!(
            !body.starts_with("20") && !body.contains("Z ") && !body.contains("ERROR"),
            "{line:?}"
        );
    }
}

#[test]
fn journal_stream_selects_journald_only_for_its_own_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    // The variable names the file stderr goes to, as systemd names its stream.
    let run = |journal_stream: &dyn Fn(&fs::Metadata) -> String, extra: &[&str]| {
        let mut cmd = agent(&[USAGE_ERROR, extra].concat(), &err);
        let meta = fs::metadata(&err).unwrap();
        cmd.env("JOURNAL_STREAM", journal_stream(&meta));
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        fs::read_to_string(&err).unwrap()
    };
    let same = |m: &fs::Metadata| format!("{}:{}", m.dev(), m.ino());
    let other_inode = |m: &fs::Metadata| format!("{}:{}", m.dev(), m.ino() + 1);

    let line = run(&same, &[]);
    assert!(line.starts_with("<3>--prometheus-listen"), "{line:?}");
    // Inherited by a process whose stderr is somewhere else: text.
    let line = run(&other_inode, &[]);
    assert!(
        line.starts_with("20") && line.contains(" ERROR --prometheus-listen"),
        "{line:?}"
    );
    // An explicit format wins over the journal.
    let line = run(&same, &["--log-format", "json"]);
    assert!(line.starts_with("{\"ts\":"), "{line:?}");
}

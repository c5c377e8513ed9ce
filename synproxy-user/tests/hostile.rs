//! The real `synproxy-agent` binary against what a hostile host or user can
//! hand it: a proc root whose stat file is a FIFO, a device, a link or huge;
//! stdin written faster than the agent samples, or with endless lines;
//! flag values out of range; SIGHUP and SIGQUIT.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{agent, lines_of};

const STAT: &str =
    "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n\
                    00000000\t00000007\t00000000\t00000003\t00000000\t00000000\n";

/// A waiting deadline that holds on a machine twice as slow.
const DEADLINE: Duration = Duration::from_secs(20);

/// A temporary proc root with `net/stat/`.
fn proc_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("net/stat")).unwrap();
    dir
}

fn stat_path(root: &Path) -> PathBuf {
    root.join("net/stat/synproxy")
}

/// The agent with `args` on a new proc root whose stat file holds [`STAT`]
/// (the root lives as long as the returned directory).
fn agent_on_stat(args: &[&str]) -> (tempfile::TempDir, Command) {
    let root = proc_root();
    fs::write(stat_path(root.path()), STAT).unwrap();
    let mut cmd = agent(args);
    cmd.arg("--proc-root").arg(root.path());
    (root, cmd)
}

/// Lines until one satisfies `want` (all of them returned), or a panic
/// naming `what` and what came.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {what} within {DEADLINE:?}; got {seen:#?}"),
        }
    }
}

fn kill(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Waits for the child to exit within `limit`; kills it and panics otherwise.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the agent did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `VmHWM` (peak resident set) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---- --proc-root files ----

/// A FIFO as the stat file: one line naming it, retried each round (a file
/// put there later is read), and SIGTERM ends the agent within 1 s.
#[test]
fn a_fifo_stat_file_is_refused_once_retried_and_sigterm_still_ends_the_agent() {
    let root = proc_root();
    let path = stat_path(root.path());
    mknod(&path, libc::S_IFIFO | 0o600, 0).unwrap();
    let root_arg = root.path().to_str().unwrap();
    let mut child = agent(&["--proc-root", root_arg, "--interval", "50ms"])
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let expected = format!(
        "{}: a FIFO (named pipe), not a regular file: not read",
        path.display()
    );
    wait_line(&stderr, &expected, |l| l.contains(&expected));
    // Rounds go on (the missing own namespace is one failure per round, not
    // logged again): a regular file put there is read at the next rounds.
    std::thread::sleep(Duration::from_millis(300));
    let again: Vec<String> = stderr.try_iter().collect();
    assert!(
        !again.iter().any(|l| l.contains("FIFO")),
        "logged again while failing: {again:#?}"
    );
    let tmp = root.path().join("net/stat/.synproxy");
    fs::write(&tmp, STAT).unwrap();
    fs::rename(&tmp, &path).unwrap();
    wait_line(&stdout, "a sample", |l| l.contains("syn_received=7i"));
    mknod(&root.path().join("net/stat/fifo"), libc::S_IFIFO | 0o600, 0).unwrap();
    fs::rename(root.path().join("net/stat/fifo"), &path).unwrap();
    wait_line(&stderr, "the FIFO again", |l| l.contains(&expected));
    let started = Instant::now();
    kill(&child, libc::SIGTERM);
    let status = wait_within(&mut child, Duration::from_secs(5), "SIGTERM");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    let rest: Vec<String> = stderr.iter().collect();
    assert!(
        !rest.iter().any(|l| l.contains("FIFO")),
        "logged more than once per failure: {rest:#?}"
    );
}

/// `--once` against a stat file that is a link to /dev/zero, a device node
/// of /dev/zero's numbers, or a regular file over the cap: exit 1 at once,
/// one line naming the path and why, bounded memory.
#[test]
fn devices_links_and_huge_files_are_refused_with_one_line() {
    let root = proc_root();
    let path = stat_path(root.path());
    let mut cases: Vec<(&str, String)> = Vec::new();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    cases.push(("link", "a symbolic link, not followed".into()));
    let node = root.path().join("zero");
    match mknod(&node, libc::S_IFCHR | 0o600, libc::makedev(1, 5)) {
        Ok(()) => cases.push((
            "device",
            "a character device, not a regular file: not read".into(),
        )),
        // SAFETY: geteuid has no preconditions.
        Err(e) => assert_ne!(unsafe { libc::geteuid() }, 0, "mknod as root: {e}"),
    }
    let huge = root.path().join("huge");
    let mut text = STAT.to_string();
    while text.len() <= 1 << 20 {
        text.push_str("00000000\t00000007\t00000000\t00000003\t00000000\t00000000\n");
    }
    fs::write(&huge, text).unwrap();
    cases.push(("huge", "larger than 1 MiB: not read".into()));
    for (case, reason) in cases {
        match case {
            "device" => fs::rename(&node, &path).unwrap(),
            "huge" => fs::rename(&huge, &path).unwrap(),
            _ => {}
        }
        let mut child = agent(&["--once", "--proc-root", root.path().to_str().unwrap()])
            .spawn()
            .unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let status = wait_within(&mut child, Duration::from_secs(10), case);
        assert_eq!(status.code(), Some(1), "{case}");
        let lines: Vec<String> = stderr.iter().collect();
        let expected = format!("{}: {reason}", path.display());
        let naming: Vec<&String> = lines.iter().filter(|l| l.contains(&expected)).collect();
        assert_eq!(
            naming.len(),
            1,
            "{case}: want one line with {expected:?}: {lines:#?}"
        );
        fs::remove_file(&path).unwrap();
    }
}

/// A FIFO in place of a named namespace (`--netns-dir`) or of the
/// `--influx-token-file`, and a token file over 64 KiB: one line naming the
/// path and why, at once (no open waiting for a writer).
#[test]
fn fifos_as_namespace_and_token_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, big) = (dir.path().join("evil"), dir.path().join("big"));
    mknod(&fifo, libc::S_IFIFO | 0o600, 0).unwrap();
    fs::write(&big, vec![b'a'; 65 * 1024]).unwrap();
    let (fifo_s, big_s) = (fifo.to_str().unwrap(), big.to_str().unwrap());
    let netns_dir = dir.path().to_str().unwrap();
    let influx = ["--influx-url", "http://127.0.0.1:9", "--influx-db", "x"];
    let cases: [(Vec<&str>, i32, String); 3] = [
        (
            vec!["--once", "--netns", "evil", "--netns-dir", netns_dir],
            1,
            format!("netns evil: {fifo_s}: a FIFO (named pipe), not a regular file: not read"),
        ),
        (
            [&influx[..], &["--influx-token-file", fifo_s]].concat(),
            2,
            format!(
                "--influx-token-file {fifo_s}: a FIFO (named pipe), not a regular file: not read"
            ),
        ),
        (
            [&influx[..], &["--influx-token-file", big_s]].concat(),
            2,
            format!("--influx-token-file {big_s}: larger than 64 KiB: not read"),
        ),
    ];
    for (args, code, want) in cases {
        let mut child = agent(&args).spawn().unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let status = wait_within(&mut child, Duration::from_secs(10), &want);
        assert_eq!(status.code(), Some(code), "{args:?}");
        let lines: Vec<String> = stderr.iter().collect();
        let naming = lines.iter().filter(|l| l.ends_with(&want)).count();
        assert_eq!(
            naming, 1,
            "{args:?}: want one line ending {want:?}: {lines:#?}"
        );
    }
}

// ---- --signal stdin ----

/// `yes | synproxy-agent --signal stdin` for 3 s: the agent's peak RSS stays
/// under 64 MiB, every round is one complete sample, and EOF ends it cleanly.
#[test]
fn stdin_written_faster_than_sampling_holds_bounded_memory() {
    let (_root, mut cmd) = agent_on_stat(&["--signal", "stdin", "--interval", "100ms"]);
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let stdout = lines_of(child.stdout.take().unwrap());
    let _stderr = lines_of(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let chunk = "y\n".repeat(32 * 1024);
    let started = Instant::now();
    let mut written = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        stdin.write_all(chunk.as_bytes()).unwrap();
        written += chunk.len() / 2;
    }
    let peak = peak_rss_kib(pid);
    drop(stdin);
    let status = wait_within(&mut child, DEADLINE, "EOF");
    assert_eq!(status.code(), Some(0));
    let lines: Vec<String> = stdout.iter().collect();
    eprintln!(
        "{written} lines in, {} samples out, peak RSS {peak} KiB",
        lines.len()
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert!(!lines.is_empty());
    assert!(lines.len() < written, "one sample per line: no coalescing");
    for line in &lines {
        assert!(
            line.starts_with("synproxy,") && line.contains(" conn_reopened=0i,"),
            "{line}"
        );
    }
}

/// 100,000 lines at once, then EOF: a handful of rounds (requests pending
/// together are one), the last one after the last line, and a clean exit.
#[test]
fn stdin_requests_coalesce() {
    let (_root, mut cmd) = agent_on_stat(&["--signal", "stdin"]);
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all("\n".repeat(100_000).as_bytes()).unwrap();
    drop(stdin);
    let status = wait_within(&mut child, DEADLINE, "EOF");
    assert_eq!(status.code(), Some(0));
    let rounds = stdout.iter().count();
    assert!(
        (1..=1000).contains(&rounds),
        "{rounds} rounds for 100000 lines"
    );
}

/// A line over 4 KiB (here 1 MiB) is no request: one warning, no sample; the
/// next short line is one.
#[test]
fn overlong_stdin_lines_are_discarded_with_a_warning() {
    let (_root, mut cmd) = agent_on_stat(&["--signal", "stdin"]);
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![b'x'; 1 << 20]).unwrap();
    stdin.write_all(b"\n").unwrap();
    wait_line(&stderr, "the discarded-line warning", |l| {
        l.contains("stdin: a line over 4096 bytes was discarded")
    });
    stdin.write_all(b"\n").unwrap();
    wait_line(&stdout, "a sample", |l| l.contains("syn_received=7i"));
    drop(stdin);
    let status = wait_within(&mut child, DEADLINE, "EOF");
    assert_eq!(status.code(), Some(0));
    assert_eq!(stdout.iter().count(), 0, "one sample only");
    let warnings = stderr
        .iter()
        .filter(|l| l.contains("was discarded"))
        .count();
    assert_eq!(warnings, 0, "one warning only");
}

// ---- flag bounds ----

/// Out-of-range durations and sizes, as flags and as variables: exit 2 and
/// one line naming the flag and the range (no panic).
#[test]
fn out_of_range_flags_are_one_line_naming_flag_and_range() {
    /// Flags, variables, what the first line must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 8] = [
        (
            &["--interval", "99999999999999999h"],
            &[],
            "'--interval <DURATION>'",
        ),
        (
            &[],
            &[("SYNPROXY_AGENT_INTERVAL", "25h")],
            "'--interval <DURATION>'",
        ),
        (&["--interval", "24h1ms"], &[], "between 10ms and 24h"),
        (
            &["--rate-resolution", "2h"],
            &[],
            "'--rate-resolution <DURATION>'",
        ),
        (
            &[],
            &[("SYNPROXY_AGENT_RATE_RESOLUTION", "5ms")],
            "between 10ms and 1h",
        ),
        (&["--influx-buffer-lines", "0"], &[], "from 1 to 1000000"),
        (
            &[],
            &[("SYNPROXY_AGENT_INFLUX_BUFFER_LINES", "1000001")],
            "'--influx-buffer-lines <LINES>'",
        ),
        (&["top", "--interval", "2h"], &[], "between 10ms and 1h"),
    ];
    for (args, env, want) in cases {
        let out = agent(args).envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(want),
            "{args:?} {env:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The largest interval runs: first round at once, SIGTERM ends it.
#[test]
fn the_largest_interval_runs() {
    let (_root, mut cmd) = agent_on_stat(&["--interval", "24h"]);
    let mut child = cmd.spawn().unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    wait_line(&stdout, "the first sample", |l| {
        l.contains("syn_received=7i")
    });
    kill(&child, libc::SIGTERM);
    let status = wait_within(&mut child, Duration::from_secs(5), "SIGTERM");
    assert_eq!(status.code(), Some(0));
}

// ---- signals ----

/// SIGHUP is logged and ignored (the agent samples on); SIGQUIT ends it
/// like SIGTERM: exit 0 within 1 s, every line written complete.
#[test]
fn sighup_is_ignored_and_sigquit_ends_the_agent_cleanly() {
    let (_root, mut cmd) = agent_on_stat(&["--interval", "50ms"]);
    let mut child = cmd.spawn().unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    wait_line(&stdout, "the first sample", |l| {
        l.contains("syn_received=7i")
    });
    kill(&child, libc::SIGHUP);
    wait_line(&stderr, "SIGHUP ignored", |l| l.contains("SIGHUP: ignored"));
    // Still sampling afterwards.
    while stdout.try_recv().is_ok() {}
    wait_line(&stdout, "a sample after SIGHUP", |l| {
        l.contains("syn_received=7i")
    });
    let started = Instant::now();
    kill(&child, libc::SIGQUIT);
    let status = wait_within(&mut child, Duration::from_secs(5), "SIGQUIT");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(took < Duration::from_secs(1), "SIGQUIT took {took:?}");
    let log: Vec<String> = stderr.iter().collect();
    assert!(
        log.iter().any(|l| l.contains("SIGQUIT, exiting")),
        "{log:#?}"
    );
    for line in stdout.iter() {
        assert!(
            line.ends_with(|c: char| c.is_ascii_digit()) && line.contains("syn_received=7i"),
            "{line}"
        );
    }
}

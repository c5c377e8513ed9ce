//! The real `synproxy-agent` binary against proc trees laid out in a temp dir:
//! output shape, errors, long-running behaviour (log once, recover, resets,
//! wraps), execd stdin mode, signals and a closed stdout. Real-kernel tests
//! live in the workspace's tests/ crate.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{agent, lines_of};

// The tests crate's reading of /proc/PID/status (std and libc only).
#[allow(dead_code)]
#[path = "../../tests/src/proc_signals.rs"]
mod proc_signals;

const HEADER: &str =
    "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fake proc root whose net/stat/synproxy is written by the test.
struct ProcTree {
    dir: tempfile::TempDir,
}

impl ProcTree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/stat")).unwrap();
        Self { dir }
    }
    /// A tree whose stat file holds `rows` (see [`ProcTree::write_rows`]).
    fn with_rows(rows: &[(u32, u32)]) -> Self {
        let proc = Self::new();
        proc.write_rows(rows);
        proc
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    /// [`agent`] on this proc root, with `args`.
    fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = agent(args);
        cmd.arg("--proc-root").arg(self.root());
        cmd
    }
    fn run(&self, args: &[&str]) -> Output {
        self.agent(args).output().unwrap()
    }
    fn stat_path(&self) -> PathBuf {
        self.root().join("net/stat/synproxy")
    }
    fn write_bytes(&self, bytes: &[u8]) {
        fs::write(self.stat_path(), bytes).unwrap();
    }
    /// Rows of (syn_received, cookie_valid) per CPU, in a new file (new inode).
    fn write_rows(&self, rows: &[(u32, u32)]) {
        // Write then rename, like a real file appearing at once.
        let tmp = self.root().join("net/stat/.synproxy.tmp");
        fs::write(&tmp, rows_text(rows)).unwrap();
        fs::rename(tmp, self.stat_path()).unwrap();
    }
    /// Rewrites in place: same inode, as the kernel's own file keeps.
    fn rewrite_rows_in_place(&self, rows: &[(u32, u32)]) {
        let text = rows_text(rows);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.stat_path())
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

/// The kernel's format for rows of (syn_received, cookie_valid).
fn rows_text(rows: &[(u32, u32)]) -> String {
    let mut text = String::from(HEADER);
    for (syn, valid) in rows {
        text.push_str(&format!(
            "00000000\t{syn:08x}\t00000000\t{valid:08x}\t00000000\t00000000\n"
        ));
    }
    text
}

fn run(args: &[&str]) -> Output {
    agent(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Field value of `name` in a line of our own output.
fn field(line: &str, name: &str) -> u64 {
    let fields = line.split(' ').nth(1).unwrap_or_default();
    for pair in fields.split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == name {
                return v.trim_end_matches(['i', 'u']).parse().unwrap();
            }
        }
    }
    panic!("no field {name} in {line:?}")
}

#[test]
fn once_prints_telegraf_shaped_line() {
    let proc = ProcTree::new();
    proc.write_bytes(&fs::read(fixture("normal_8cpu")).unwrap());
    let out = proc.run(&[
        "--once",
        "--no-ebpf",
        "--hostname",
        "gw01",
        "--tag",
        "dc=ams 1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let (head, ts) = lines[0].rsplit_once(' ').unwrap();
    assert_eq!(
        head,
        "synproxy,dc=ams\\ 1,host=gw01 conn_reopened=0i,cookie_invalid=84286i,cookie_retrans=0i,cookie_valid=251855i,entries=0i,syn_received=254587i"
    );
    let ts: u64 = ts.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now - ts < 60_000_000_000,
        "timestamp {ts} is not now ({now})"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn once_with_uint_and_no_host_tag_and_overflow() {
    let proc = ProcTree::new();
    proc.write_bytes(&fs::read(fixture("overflow_2cpu")).unwrap());
    let out = proc.run(&["--once", "--uint", "--no-host-tag"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("synproxy conn_reopened=0u,cookie_invalid=7784628233u,cookie_retrans=0u,cookie_valid=4294967300u,entries=0u,syn_received=4294967300u "),
        "{stdout}"
    );
}

#[test]
fn host_proc_env_is_honoured() {
    let proc = ProcTree::with_rows(&[(3, 2)]);
    let out = agent(&["--once"])
        .env("HOST_PROC", proc.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(field(&text(&out.stdout), "syn_received"), 3);
}

#[test]
fn missing_proc_root_is_a_one_line_usage_error() {
    let out = run(&["--once", "--proc-root", "/nonexistent/proc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--proc-root /nonexistent/proc: no such directory"),
        "{stderr}"
    );
}

#[test]
fn wrong_flag_is_rejected_with_exit_2() {
    let out = run(&["--once", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unexpected argument '--bogus'"));
    let out = run(&["--interval", "10 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--interval"));
}

#[test]
fn missing_file_once_fails_naming_path_and_module() {
    let proc = ProcTree::new();
    let out = proc.run(&["--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}: file not found", proc.stat_path().display())),
        "{stderr}"
    );
    assert!(stderr.contains("nf_synproxy_core"), "{stderr}");
}

#[test]
fn bad_files_fail_with_one_clear_line() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "file is empty"),
        (
            &fs::read(fixture("mismatch")).unwrap(),
            "invalid number of columns in data, expected 5 found 6",
        ),
        (
            &fs::read(fixture("invalid_hex")).unwrap(),
            "invalid value \"entries\": not hexadecimal",
        ),
        (
            b"entries\tsyn_received\n0\t123456789\n",
            "wider than 32 bits",
        ),
        (b"\x7fELF\x02\x01\x01\x00\x00", "binary data"),
    ];
    for (content, expected) in cases {
        let proc = ProcTree::new();
        proc.write_bytes(content);
        let out = proc.run(&["--once"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "want {expected:?} in {stderr}");
        assert!(
            stderr.contains(proc.stat_path().to_str().unwrap()),
            "{stderr}"
        );
    }
}

/// Reads stdout lines on a thread so the test can wait with a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    lines_of(child.stdout.take().unwrap())
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("agent printed no line within 5 s")
}

fn stop(mut child: Child) -> String {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    stderr_of(&mut child)
}

/// All of an ended child's stderr.
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn interval_logs_a_missing_file_once_and_recovers() {
    let proc = ProcTree::new();
    let mut child = proc
        .agent(&["--interval", "50ms", "--log-format", "telegraf"])
        .spawn()
        .unwrap();
    let lines = line_reader(&mut child);
    // Several intervals with the file missing.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        lines.try_recv().is_err(),
        "no line while the file is missing"
    );
    proc.write_rows(&[(5, 4), (1, 1)]);
    let line = next_line(&lines);
    assert_eq!(field(&line, "syn_received"), 6);
    assert_eq!(field(&line, "cookie_valid"), 5);
    let stderr = stop(child);
    assert_eq!(
        stderr.matches("file not found").count(),
        1,
        "missing file logged once: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("W! ") && l.contains("nf_synproxy_core")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("I! ") && l.contains("readable again")),
        "{stderr}"
    );
}

#[test]
fn interval_keeps_totals_monotonic_across_wraps_and_resets() {
    let proc = ProcTree::with_rows(&[(0xffff_fff0, 10), (2, 0)]);
    let mut child = proc.agent(&["--interval", "50ms"]).spawn().unwrap();
    let lines = line_reader(&mut child);
    let first = next_line(&lines);
    assert_eq!(field(&first, "syn_received"), 0xffff_fff0 + 2);

    // CPU 0 wraps (same file, same inode): +0x20 events.
    proc.rewrite_rows_in_place(&[(0x10, 10), (2, 0)]);
    let expected = 0xffff_fff0u64 + 2 + 0x20;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = next_line(&lines);
        let v = field(&line, "syn_received");
        assert!(v >= 0xffff_fff0 + 2, "totals went down: {line}");
        if v == expected {
            break;
        }
        assert!(Instant::now() < deadline, "never saw the wrapped total");
    }

    // New file (new inode): the module was reloaded, counters restarted.
    proc.write_rows(&[(3, 1), (0, 0)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = next_line(&lines);
        let v = field(&line, "syn_received");
        assert!(v >= expected, "reset shown as a drop: {line}");
        if v == expected + 3 {
            assert_eq!(field(&line, "cookie_valid"), 10 + 1);
            break;
        }
        assert!(Instant::now() < deadline, "never saw the post-reset total");
    }
    let stderr = stop(child);
    assert!(stderr.contains("counters were recreated"), "{stderr}");
}

#[test]
fn stdin_mode_samples_per_line_and_exits_on_eof() {
    let proc = ProcTree::with_rows(&[(7, 7)]);
    let mut child = proc
        .agent(&[
            "--signal",
            "stdin",
            "--no-host-tag",
            "--log-format",
            "telegraf",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_reader(&mut child);
    // No sample before Telegraf asks for one.
    std::thread::sleep(Duration::from_millis(300));
    assert!(lines.try_recv().is_err());
    for n in 1..=3 {
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let line = next_line(&lines);
        assert!(
            line.starts_with("synproxy conn_reopened=0i"),
            "sample {n}: {line}"
        );
        assert_eq!(field(&line, "syn_received"), 7);
    }
    let started = Instant::now();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(lines.try_recv().is_err(), "no extra sample after EOF");
}

#[test]
fn sigterm_and_sigint_exit_zero_within_a_second() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        for mode in [&["--interval", "1h"][..], &["--signal", "stdin"][..]] {
            let proc = ProcTree::with_rows(&[(1, 1)]);
            let mut args = vec!["--proc-root", proc.root().to_str().unwrap()];
            args.extend_from_slice(mode);
            let mut child = agent(&args).stdin(Stdio::piped()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            let status = child.wait().unwrap();
            let took = started.elapsed();
            assert_eq!(status.code(), Some(0), "signal {signal} mode {mode:?}");
            assert!(
                took < Duration::from_secs(1),
                "signal {signal} took {took:?}"
            );
        }
    }
}

#[test]
fn closed_stdout_ends_the_agent_cleanly() {
    let proc = ProcTree::with_rows(&[(1, 1)]);
    let mut child = proc.agent(&["--interval", "20ms"]).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("synproxy,"));
    drop(stdout);
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let stderr = stderr_of(&mut child);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_named_netns_fails_once_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "--once",
        "--netns",
        "nope",
        "--netns-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("netns nope:"), "{stderr}");
    assert!(stderr.contains("no such network namespace"), "{stderr}");
}

/// Without `--no-ebpf`: on a kernel without kprobes (this project's machines),
/// `--once` still prints the `synproxy` line, exits 0 and says once why eBPF is off.
#[test]
fn once_without_kprobes_degrades_with_one_warning() {
    let proc = ProcTree::new();
    proc.write_bytes(&fs::read(fixture("normal_8cpu")).unwrap());
    let out = proc
        .agent(&["--once", "--log-format", "telegraf"])
        .env_remove("SYNPROXY_AGENT_NO_EBPF")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("synproxy,"), "{stdout}");
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(
            stderr,
            "W! [synproxy-agent] eBPF disabled: kprobes not supported by this kernel (/sys/bus/event_source/devices/kprobe missing); reporting /proc only\n"
        );
    } else {
        assert!(stderr.lines().count() <= 1, "{stderr}");
        assert!(
            stderr.is_empty() || stderr.starts_with("W! [synproxy-agent] eBPF disabled: "),
            "{stderr}"
        );
    }
}

/// The file vanishing (module unloaded) and coming back with higher values is
/// still a restart of the counters: they add to the totals, not replace them.
#[test]
fn file_gone_and_back_adds_the_new_counters() {
    let proc = ProcTree::with_rows(&[(5, 5)]);
    let mut child = proc.agent(&["--interval", "50ms"]).spawn().unwrap();
    let lines = line_reader(&mut child);
    assert_eq!(field(&next_line(&lines), "syn_received"), 5);
    fs::remove_file(proc.stat_path()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    while lines.try_recv().is_ok() {}
    proc.write_rows(&[(7, 7)]);
    let line = next_line(&lines);
    assert_eq!(field(&line, "syn_received"), 12, "{line}");
    assert_eq!(field(&line, "cookie_valid"), 12, "{line}");
    let stderr = stop(child);
    assert!(stderr.contains("the file was gone"), "{stderr}");
}

#[test]
fn sigterm_at_any_moment_of_start_up_exits_zero() {
    for delay_ms in [0u64, 1, 3, 10, 30] {
        let proc = ProcTree::with_rows(&[(1, 1)]);
        let mut child = proc.agent(&["--interval", "1h"]).spawn().unwrap();
        // Before main() runs nothing can catch a signal: start the clock when
        // the agent's first statement has taken SIGTERM over.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc_signals::agent_takes_sigterm(child.id()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the agent to block SIGTERM"
            );
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM after {delay_ms} ms: {status:?}"
        );
    }
}

#[test]
fn a_stdout_reader_that_stops_reading_does_not_block_shutdown() {
    let proc = ProcTree::with_rows(&[(1, 1)]);
    // Long lines fill the pipe (64 KiB) within a few dozen rounds.
    let tag = format!("pad={}", "x".repeat(4000));
    let mut child = proc
        .agent(&["--interval", "10ms", "--tag", &tag])
        .spawn()
        .unwrap();
    // Nobody reads stdout from here on; wait for the agent to notice.
    let _stdout = child.stdout.take().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("waiting for the agent to report an unread stdout: {e}"));
        if line.contains("stdout is not being read") {
            break;
        }
    }
    let started = Instant::now();
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

// ---- Outputs: Prometheus endpoint, stdout with and without it ----

/// `GET path` over HTTP/1.1 on `addr`: (status line, headers, body).
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> std::io::Result<(String, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((head.to_string(), body.to_string()))
}

/// Starts the agent, waits for its metrics address in its log, returns it
/// and a reader of its stderr lines.
fn start_with_metrics(args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = agent(args).spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let Ok(line) = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timeout waiting for the agent to log its metrics address");
        };
        if let Some((_, rest)) = line.split_once("Prometheus metrics on http://") {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    (child, addr, stderr)
}

/// Polls /metrics until `line` is in it.
fn wait_for_metric(addr: &str, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((head, body)) = http_get(addr, "/metrics", None) {
            if head.starts_with("HTTP/1.1 200") && body.lines().any(|l| l == line) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timeout waiting for {line:?} on http://{addr}/metrics"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn prometheus_endpoint_serves_totals_and_stdout_stays_quiet() {
    let proc = ProcTree::with_rows(&[(7, 3), (1, 1)]);
    let (mut child, addr, _stderr) = start_with_metrics(&[
        "--interval",
        "100ms",
        "--proc-root",
        proc.root().to_str().unwrap(),
        "--prometheus-listen",
        "127.0.0.1:0",
    ]);
    let body = wait_for_metric(&addr, "synproxy_syn_received_total{netns=\"self\"} 8");
    assert!(
        body.contains("synproxy_cookie_valid_total{netns=\"self\"} 4"),
        "{body}"
    );
    // The counters move with the kernel's.
    proc.rewrite_rows_in_place(&[(9, 3), (1, 1)]);
    wait_for_metric(&addr, "synproxy_syn_received_total{netns=\"self\"} 10");
    let (head, body) = http_get(&addr, "/metrics", Some("application/openmetrics-text")).unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (head, _) = http_get(&addr, "/other", None).unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.is_empty(), "stdout without --stdout: {stdout}");
}

#[test]
fn stdout_flag_prints_line_protocol_next_to_prometheus() {
    let proc = ProcTree::with_rows(&[(7, 3)]);
    let (mut child, addr, _stderr) = start_with_metrics(&[
        "--interval",
        "100ms",
        "--proc-root",
        proc.root().to_str().unwrap(),
        "--hostname",
        "gw01",
        "--prometheus-listen",
        "[::1]:0",
        "--stdout",
    ]);
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let lines = line_reader(&mut child);
    let line = next_line(&lines);
    assert!(
        line.starts_with("synproxy,host=gw01 conn_reopened=0i,cookie_invalid=0i,cookie_retrans=0i,cookie_valid=3i,entries=0i,syn_received=7i "),
        "{line}"
    );
    wait_for_metric(&addr, "synproxy_syn_received_total{netns=\"self\"} 7");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn prometheus_listen_errors_are_one_line_naming_the_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let in_use = format!("127.0.0.1:{port}");
    let cases = [
        (
            in_use.clone(),
            format!("--prometheus-listen {in_use}: address already in use"),
        ),
        (
            "nonsense".to_string(),
            "--prometheus-listen \"nonsense\": not an address to listen on (expected IP:PORT"
                .to_string(),
        ),
        (
            "127.0.0.1:70000".to_string(),
            "--prometheus-listen \"127.0.0.1:70000\": not an address".to_string(),
        ),
        (
            "192.0.2.1:10816".to_string(),
            "--prometheus-listen 192.0.2.1:10816: address not available".to_string(),
        ),
    ];
    let proc = ProcTree::with_rows(&[(1, 1)]);
    for (addr, expected) in cases {
        let out = proc.run(&["--interval", "1s", "--prometheus-listen", &addr]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&expected), "want {expected:?} in {stderr}");
        assert!(out.stdout.is_empty());
    }
    drop(busy);
}

// ---- InfluxDB output: start-up errors and an unreachable server ----

#[test]
fn influx_flag_errors_are_one_line_naming_the_flag_with_exit_2() {
    let proc = ProcTree::with_rows(&[(1, 1)]);
    let root = proc.root().to_str().unwrap().to_string();
    let missing_token = proc.root().join("no-such-token");
    let missing_token = missing_token.to_str().unwrap().to_string();
    // (flags, environment, the error line expected)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], String);
    let cases: Vec<Case> = vec![
        (
            vec!["--influx-url", "localhost:8086", "--influx-db", "d"],
            &[],
            "--influx-url \"localhost:8086\": not a URL".into(),
        ),
        (
            vec!["--influx-url", "ftp://h:21", "--influx-db", "d"],
            &[],
            "--influx-url \"ftp://h:21\": scheme \"ftp\" is not supported".into(),
        ),
        (
            vec!["--influx-url", "http://u:secret@h:8086", "--influx-db", "d"],
            &[],
            "--influx-url: credentials do not belong in the URL".into(),
        ),
        (
            vec![
                "--influx-url",
                "http://h:8086",
                "--influx-db",
                "d",
                "--influx-bucket",
                "b",
                "--influx-org",
                "o",
            ],
            &[],
            "--influx-db with --influx-bucket: choose the 1.x API".into(),
        ),
        (
            vec!["--influx-url", "http://h:8086"],
            &[],
            "--influx-url http://h:8086: needs --influx-db DB".into(),
        ),
        (
            vec!["--influx-url", "http://h:8086", "--influx-bucket", "b"],
            &[],
            "--influx-bucket needs --influx-org".into(),
        ),
        (
            vec!["--influx-db", "d"],
            &[],
            "--influx-db: needs --influx-url".into(),
        ),
        (
            vec![
                "--influx-url",
                "http://h:8086",
                "--influx-bucket",
                "b",
                "--influx-org",
                "o",
                "--influx-token-file",
                &missing_token,
            ],
            &[],
            format!("--influx-token-file {missing_token}: no such file"),
        ),
        (
            vec!["--influx-url", "http://h:8086", "--influx-db", "d"],
            &[("INFLUX_USERNAME", "u")],
            "INFLUX_USERNAME is set without INFLUX_PASSWORD".into(),
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = agent(&["--interval", "1s", "--proc-root", &root]);
        cmd.args(&args)
            .env_remove("INFLUX_TOKEN")
            .env_remove("INFLUX_USERNAME")
            .env_remove("INFLUX_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("ERROR {expected}")),
            "{args:?}: want {expected:?} in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

/// Nothing listens at the URL: the agent keeps sampling (and printing, with
/// --stdout), logs the failure once, retries, and exits 0 on SIGTERM saying
/// what it could not write. Prometheus shows the backlog.
#[test]
fn unreachable_influx_url_keeps_sampling_and_exits_zero() {
    let proc = ProcTree::with_rows(&[(5, 2)]);
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (mut child, addr, stderr) = start_with_metrics(&[
        "--interval",
        "200ms",
        "--proc-root",
        proc.root().to_str().unwrap(),
        "--influx-url",
        &url,
        "--influx-db",
        "d",
        "--prometheus-listen",
        "127.0.0.1:0",
        "--stdout",
    ]);
    let lines = line_reader(&mut child);
    for _ in 0..8 {
        let line = next_line(&lines);
        assert!(line.starts_with("synproxy,"), "{line}");
    }
    let body = wait_for_metric(&addr, "synproxy_agent_influx_written_lines_total 0");
    let buffered = body
        .lines()
        .find_map(|l| l.strip_prefix("synproxy_agent_influx_buffered_lines "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no buffered lines gauge in {body}"));
    assert!(buffered >= 1, "{body}");
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The reader ends at the agent's exit (EOF): every line is in.
    let log: Vec<String> = stderr.iter().collect();
    let log = log.join("\n");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one warning for the same failure:\n{log}");
    assert!(
        refused[0].contains(&format!("InfluxDB {url} (database d)"))
            && refused[0].contains("retrying"),
        "{log}"
    );
    assert!(log.contains("not written"), "{log}");
}

/// The agent's stderr until `until` appears in a line (or 20 s pass), after
/// SIGTERM and exit.
fn stderr_until(mut child: Child, until: &str) -> String {
    let rx = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains(until);
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    lines.extend(rx.try_iter());
    lines.join("\n")
}

#[test]
fn a_token_to_a_remote_plain_http_influxdb_is_warned_about_once() {
    let proc = ProcTree::new();
    proc.write_bytes(&fs::read(fixture("normal_8cpu")).unwrap());
    let root = proc.root().to_str().unwrap();
    let start = |url: &str| {
        agent(&[
            "--proc-root",
            root,
            "--interval",
            "100ms",
            "--influx-url",
            url,
            "--influx-db",
            "telegraf",
        ])
        .env("INFLUX_TOKEN", "t0ken")
        .spawn()
        .unwrap()
    };
    // TEST-NET-1: nothing answers; the warning is about the start-up config.
    let log = stderr_until(start("http://192.0.2.1:8086"), "writing line protocol");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("plain text")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("192.0.2.1"),
        "{log}"
    );
    assert!(!log.contains("t0ken"), "the token is logged: {log}");
    // Loopback: nothing to warn about.
    let log = stderr_until(start("http://127.0.0.1:9"), "writing line protocol");
    assert!(!log.contains("plain text"), "{log}");
}

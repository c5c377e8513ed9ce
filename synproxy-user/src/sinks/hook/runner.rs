//! One run of the hook: the program in its own process group, with no
//! capabilities and `no_new_privs`, a clean environment, no descriptor of
//! the agent's but its three pipes, the event's JSON on its stdin; its stdout and stderr drained (the first [`CAPTURE`] bytes
//! kept); killed with its group past the timeout or at the exit deadline.
//! Everything happens on the calling thread with non-blocking pipes, so a
//! hook that never reads its stdin or floods its output blocks nothing.

use super::config::{HookConfig, HOOK_PATH};
use crate::analysis::attack::AttackEvent;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of stdout and of stderr kept for the log; the rest is read and
/// thrown away.
pub const CAPTURE: usize = 4096;

/// Lines of stderr a failure's log line quotes, and characters per line.
const STDERR_LINES: usize = 2;
const LINE_CHARS: usize = 200;

/// How often the run is looked at while nothing is written or read.
const TICK: Duration = Duration::from_millis(10);

/// The agent's exit deadline, once it is known: runs still going then are
/// killed.
#[derive(Debug, Default)]
pub struct Cut(Mutex<Option<Instant>>);

impl Cut {
    pub fn set(&self, deadline: Instant) {
        if let Ok(mut cut) = self.0.lock() {
            *cut = Some(deadline);
        }
    }

    pub fn get(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|cut| *cut)
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exit status 0.
    Done,
    /// Exited non-zero or died of a signal.
    Failed(ExitStatus),
    /// Ran past `--on-attack-timeout`; its process group was killed.
    TimedOut,
    /// Still running at the agent's exit deadline; killed.
    CutOff,
    /// Could not be started (the program is gone, not executable, ...).
    CannotRun(std::io::Error),
}

/// One run: how it ended and what it wrote.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub elapsed: Duration,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// The start of one output stream and its full length.
#[derive(Debug, Default)]
pub struct Captured {
    pub head: Vec<u8>,
    pub bytes: u64,
    closed: bool,
}

impl Captured {
    fn take(&mut self, data: &[u8]) {
        let room = CAPTURE.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..room.min(data.len())]);
        self.bytes += data.len() as u64;
    }

    /// The first non-empty lines, control characters escaped, bounded: what
    /// a log line may quote of it.
    pub fn first_lines(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.head);
        let picked: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(lines)
            .map(|l| {
                let mut out: String = l
                    .chars()
                    .take(LINE_CHARS)
                    .flat_map(|c| {
                        let escaped: Vec<char> = if c.is_control() {
                            c.escape_default().collect()
                        } else {
                            vec![c]
                        };
                        escaped
                    })
                    .collect();
                if l.chars().count() > LINE_CHARS {
                    out.push_str("...");
                }
                out
            })
            .collect();
        picked.join(" | ")
    }
}

impl Report {
    /// The log line for this run (a success's is logged at debug level).
    pub fn line(&self, hook: &HookConfig, event: &AttackEvent) -> String {
        let who = format!(
            "hook {} for attack {} ({})",
            hook.program.display(),
            event.id,
            event.phase.name()
        );
        match &self.outcome {
            Outcome::Done => format!("{who}: done in {:.2}s", self.elapsed.as_secs_f64()),
            Outcome::Failed(status) => {
                let how = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    (None, None) => status.to_string(),
                };
                let stderr = self.stderr.first_lines(STDERR_LINES);
                if stderr.is_empty() {
                    format!("{who} failed: {how} (no stderr)")
                } else {
                    format!("{who} failed: {how}; stderr: {stderr}")
                }
            }
            Outcome::TimedOut => format!(
                "{who} ran past its {:?} timeout (--on-attack-timeout): killed it and its process group",
                hook.timeout
            ),
            Outcome::CutOff => format!(
                "{who} was still running at the agent's exit after {:.1}s: killed it and its process group",
                self.elapsed.as_secs_f64()
            ),
            // exec's ENOENT for a file that exists: its `#!` line names a
            // missing interpreter.
            Outcome::CannotRun(e)
                if e.kind() == std::io::ErrorKind::NotFound && hook.program.is_file() =>
            {
                format!("{who}: cannot run: {e} (the program exists: is the interpreter on its #! line missing?)")
            }
            Outcome::CannotRun(e) => format!("{who}: cannot run: {e}"),
        }
    }
}

/// The hook's environment: `PATH` and the event's figures, nothing of the
/// agent's (no credentials, no `SYNPROXY_AGENT_*`).
pub fn environment(event: &AttackEvent) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", HOOK_PATH.to_string()),
        ("SYNPROXY_ATTACK_PHASE", event.phase.name().to_string()),
        ("SYNPROXY_ATTACK_ID", event.id.clone()),
        (
            "SYNPROXY_ATTACK_NETNS",
            event.netns.clone().unwrap_or_default(),
        ),
        ("SYNPROXY_ATTACK_KIND", event.kind.name().to_string()),
        ("SYNPROXY_ATTACK_PORT", event.port_tag()),
        ("SYNPROXY_ATTACK_RATE", whole(event.rate)),
        ("SYNPROXY_ATTACK_PEAK_RATE", whole(event.peak_rate)),
        ("SYNPROXY_ATTACK_BASELINE", whole(event.baseline)),
        ("SYNPROXY_ATTACK_EVENTS", event.events.to_string()),
        ("SYNPROXY_ATTACK_START_NS", event.start_ns.to_string()),
    ]
}

/// A rate as a whole number, for `[ "$SYNPROXY_ATTACK_RATE" -gt 1000 ]`
/// (the JSON has it exactly).
fn whole(rate: f64) -> String {
    if rate.is_finite() && rate >= 0.0 {
        format!("{}", rate.round() as u64)
    } else {
        "0".to_string()
    }
}

/// Runs in the child between fork and exec: no capability can survive or be
/// gained by the exec, whatever the agent's uid and bounding set. Only raw
/// system calls (async-signal-safe).
fn drop_privileges() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments on the calling (child) process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; EINVAL before Linux 4.3 (no ambient set) is ignored.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    // An empty permitted set: with no_new_privs the exec's new permitted set
    // is capped by it, so even uid 0 (whose exec would otherwise fill it from
    // the bounding set) starts the hook with none.
    crate::privileges::capset(0, 0, 0).map_err(std::io::Error::from_raw_os_error)
}

/// Marks every descriptor from `first` on close-on-exec, so that nothing the
/// agent holds (namespace files, sockets, BPF objects) reaches the hook even
/// if it was opened without `O_CLOEXEC`. Marked rather than closed: the
/// pipe by which the child reports a failed exec is among them. Only raw
/// system calls.
fn close_on_exec_from(first: libc::c_uint) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this
    // (child) process's descriptors (Linux 5.11+).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Older kernels (or a filter that denies it): one descriptor at a time,
    // up to the descriptor limit (at most 65536).
    // SAFETY: a zeroed rlimit is a valid out-parameter for getrlimit.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into `limit`.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(65_536) as libc::c_int
    } else {
        1024
    };
    for fd in first as libc::c_int..max {
        // SAFETY: fcntl on a descriptor number; EBADF when it is not open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Runs the hook once for `event`; returns when it has exited and been
/// reaped (or could not start).
pub fn run(hook: &HookConfig, event: &AttackEvent, cut: &Cut) -> Report {
    let started = Instant::now();
    let mut command = Command::new(&hook.program);
    command
        .args(&hook.args)
        .env_clear()
        .envs(environment(event))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: both make only raw system calls, which is what may run between
    // fork and exec.
    unsafe {
        command.pre_exec(|| {
            drop_privileges()?;
            close_on_exec_from(3);
            Ok(())
        })
    };
    let mut report = Report {
        outcome: Outcome::Done,
        elapsed: Duration::ZERO,
        stdout: Captured::default(),
        stderr: Captured::default(),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            report.outcome = Outcome::CannotRun(e);
            return report;
        }
    };
    let mut input = event.to_json().into_bytes();
    input.push(b'\n');
    let killed = supervise(&mut child, &input, hook.timeout, started, cut, &mut report);
    // The hook exited (or was killed): whatever it left running in its group
    // goes too, before it is reaped, so the group id cannot have been reused.
    kill_group(&child);
    drain(&mut child, &mut report);
    let status = child.wait();
    report.elapsed = started.elapsed();
    report.outcome = match (killed, status) {
        (Some(outcome), _) => outcome,
        (None, Ok(status)) if status.success() => Outcome::Done,
        (None, Ok(status)) => Outcome::Failed(status),
        (None, Err(e)) => Outcome::CannotRun(e),
    };
    report
}

/// Feeds stdin and drains stdout and stderr until the child exits or must
/// be killed; `Some` when it was killed.
fn supervise(
    child: &mut Child,
    input: &[u8],
    timeout: Duration,
    started: Instant,
    cut: &Cut,
    report: &mut Report,
) -> Option<Outcome> {
    for fd in [
        child.stdin.as_ref().map(AsRawFd::as_raw_fd),
        child.stdout.as_ref().map(AsRawFd::as_raw_fd),
        child.stderr.as_ref().map(AsRawFd::as_raw_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd);
    }
    let mut written = 0;
    loop {
        if exited(child) {
            return None;
        }
        let now = Instant::now();
        if now >= started + timeout {
            kill_group(child);
            return Some(Outcome::TimedOut);
        }
        if cut.get().is_some_and(|deadline| now >= deadline) {
            kill_group(child);
            return Some(Outcome::CutOff);
        }
        wait_for_pipes(child, TICK);
        if let Some(stdin) = child.stdin.as_mut() {
            match stdin.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EPIPE: the hook closed its stdin or never reads it; fine.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                child.stdin = None; // EOF for the hook
            }
        }
        pump(child, report);
    }
}

/// Reads what the pipes hold now, without blocking.
fn pump(child: &mut Child, report: &mut Report) {
    let mut buf = [0u8; 8192];
    if let Some(out) = child.stdout.as_mut() {
        read_available(out, &mut report.stdout, &mut buf);
        if report.stdout.closed {
            child.stdout = None;
        }
    }
    if let Some(err) = child.stderr.as_mut() {
        read_available(err, &mut report.stderr, &mut buf);
        if report.stderr.closed {
            child.stderr = None;
        }
    }
}

/// After the exit: what is left in the pipes. Their writers in the hook's
/// group are dead; one that left the group (setsid) and holds them open is
/// given a second, then the pipes are closed.
fn drain(child: &mut Child, report: &mut Report) {
    child.stdin = None;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if child.stdout.is_none() && child.stderr.is_none() {
            break;
        }
        wait_for_pipes(child, TICK);
        pump(child, report);
    }
    child.stdout = None;
    child.stderr = None;
}

fn read_available(pipe: &mut impl Read, captured: &mut Captured, buf: &mut [u8]) {
    // Bounded per call, so that one flooding stream cannot starve the checks
    // of the timeout.
    for _ in 0..64 {
        match pipe.read(buf) {
            Ok(0) => {
                captured.closed = true;
                return;
            }
            Ok(n) => captured.take(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => {
                captured.closed = true;
                return;
            }
        }
    }
}

/// poll(2) on the open pipes for at most `tick`.
fn wait_for_pipes(child: &Child, tick: Duration) {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
    if let Some(stdin) = &child.stdin {
        fds.push(pollfd(stdin.as_raw_fd(), libc::POLLOUT));
    }
    if let Some(out) = &child.stdout {
        fds.push(pollfd(out.as_raw_fd(), libc::POLLIN));
    }
    if let Some(err) = &child.stderr {
        fds.push(pollfd(err.as_raw_fd(), libc::POLLIN));
    }
    let ms = tick.as_millis().min(1000) as libc::c_int;
    if fds.is_empty() {
        std::thread::sleep(tick);
        return;
    }
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn set_nonblocking(fd: libc::c_int) {
    // SAFETY: fcntl on a pipe end this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Whether the child has exited, without reaping it (so its pid, which is
/// also its group's id, stays taken until the group is killed).
fn exited(child: &Child) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo_t pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid (0 when the child has not exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// SIGKILL to the hook's process group (its id is the hook's pid; the child
/// is not reaped yet, so the id is still ours).
fn kill_group(child: &Child) {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: signals the process group the hook leads.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

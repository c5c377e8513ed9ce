//! The agent running with eBPF for the length of a check: started before the
//! traffic (`--signal stdin`, or sampling on its own with `--interval`), directly
//! or as PID 1 of its own PID namespace, then stopped by closing stdin or by a
//! signal. Also the checks that nothing of it stays in the kernel afterwards:
//! kprobe events, kprobe_profile lines, BPF programs and maps.
//!
//! Which kprobe events are an agent's is found by difference (the events of the
//! agent's tracefs group that appeared while it started), so the checks do not
//! depend on how the agent names its events.

use crate::bpf_objects::{self, Kind};
use crate::child::pump;
use crate::line_protocol::{self, FieldValue, Line};
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Probes the agent attaches.
pub const PROBE_COUNT: usize = synproxy_user::sources::ebpf::PROBES.len();
/// Program names of synproxy-ebpf: `spx_` (kprobes) and `spxf_` (fentry/fexit)
/// (BPF object names are cut at 15 bytes).
pub const PROGRAM_PREFIX: &str = "spx";
/// Map names of synproxy-ebpf (and aya-log's ring buffer).
pub const MAP_NAMES: [&str; 6] = [
    "NS_TABLE",
    "NS_STATS",
    "RATE_TAGS",
    "DIAG",
    "ACK_STASH",
    "AYA_LOGS",
];
/// tracefs group of the agent's kprobe events.
pub const EVENT_GROUP: &str = "synproxy_agent";
/// What the agent logs once every probe is attached.
pub const ATTACHED_LOG: &str = "eBPF probes attached";
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon the agent must exit after SIGTERM/SIGINT/stdin EOF. The agent's
/// target is 1 s (well under 1 s with kprobes under QEMU/TCG); the checks allow
/// 3 s so that a guest on a machine twice as slow and busy still passes.
pub const EXIT_LIMIT: Duration = Duration::from_secs(3);
/// The same with fentry/fexit programs: the kernel tears their 5 trampolines
/// down one after the other, each unregistration waiting for RCU-tasks grace
/// periods under ftrace's lock (0.45-0.95 s on 6.1/6.12 under QEMU/TCG, a 2 s
/// target), whether the agent unloads them or its exit closes them.
pub const FENTRY_EXIT_LIMIT: Duration = Duration::from_secs(5);
/// How long a stopped agent may take to exit before the check gives up on it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Whether this kernel can run the agent's probes at all.
pub fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || TRACEFS
            .iter()
            .any(|t| Path::new(t).join("kprobe_events").exists())
}

fn tracefs_file(name: &str) -> Option<String> {
    TRACEFS
        .iter()
        .find_map(|t| std::fs::read_to_string(Path::new(t).join(name)).ok())
}

/// `p:synproxy_agent/NAME function` (or `r256:...`) -> NAME.
fn group_event_name(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(':')?;
    let spec = rest.split_whitespace().next()?;
    let (group, name) = spec.split_once('/')?;
    (group == EVENT_GROUP).then_some(name)
}

/// Names of every kprobe event of the agent's group (of any agent).
pub fn group_events() -> BTreeSet<String> {
    tracefs_file("kprobe_events")
        .unwrap_or_default()
        .lines()
        .filter_map(group_event_name)
        .map(str::to_string)
        .collect()
}

/// Lines of kprobe_events / kprobe_profile that belong to the events `names`.
pub fn kprobe_lines_for(names: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let events = tracefs_file("kprobe_events")
        .unwrap_or_default()
        .lines()
        .filter(|l| group_event_name(l).is_some_and(|n| names.contains(n)))
        .map(str::to_string)
        .collect();
    let profile = tracefs_file("kprobe_profile")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| names.contains(n))
        })
        .map(str::to_string)
        .collect();
    (events, profile)
}

/// Removes the kprobe events `names` of the agent's group (test hygiene after a
/// check that left some, so the next check starts clean). Returns what could
/// not be removed (an event still open by a live agent: EBUSY).
pub fn remove_events(names: &BTreeSet<String>) -> Vec<String> {
    let mut failed = Vec::new();
    let Some(root) = TRACEFS
        .iter()
        .map(Path::new)
        .find(|t| t.join("kprobe_events").exists())
    else {
        return names.iter().cloned().collect();
    };
    for name in names.intersection(&group_events()) {
        let res = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("kprobe_events"))
            .and_then(|mut f| f.write_all(format!("-:{EVENT_GROUP}/{name}\n").as_bytes()));
        if let Err(e) = res {
            failed.push(format!("{name}: {e}"));
        }
    }
    failed
}

/// A BPF program (`prog`) or map of the agent: (prog, id, name).
pub type BpfObject = (bool, u32, String);

/// The agent's kprobe events and BPF objects present at one moment (of any agent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelState {
    pub events: BTreeSet<String>,
    pub objects: Vec<BpfObject>,
}

impl KernelState {
    pub fn now() -> Result<Self> {
        Ok(KernelState {
            events: group_events(),
            objects: agent_objects()?,
        })
    }

    /// What is in `self` and was not in `before`.
    pub fn since(&self, before: &KernelState) -> KernelState {
        KernelState {
            events: self.events.difference(&before.events).cloned().collect(),
            objects: self
                .objects
                .iter()
                .filter(|o| !before.objects.contains(o))
                .cloned()
                .collect(),
        }
    }
}

/// How the agent process is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// A child of this process.
    Direct,
    /// PID 1 of a new PID (and mount) namespace with its own /proc, like
    /// `unshare -p -f --mount-proc`: `helper` is synproxy-scenario itself, run as
    /// `helper --pidns-exec AGENT ARGS...` (see [`crate::pidns`]).
    PidNamespace { helper: PathBuf },
    /// As uid/gid 65534 with only `caps` (comma-separated, setpriv's names)
    /// as ambient capabilities and bounding set: `helper --caps-exec CAPS
    /// AGENT ARGS...` (see [`crate::caps`]), which execs the agent (same pid).
    Caps { helper: PathBuf, caps: String },
}

pub struct LiveAgent {
    child: Child,
    /// Host pid of the agent process (for [`Launch::PidNamespace`] the child is
    /// the helper and the agent its child).
    agent_pid: u32,
    started: Instant,
    /// Kernel state before the agent started.
    before: KernelState,
    /// The agent's own events and objects, once it attached.
    owned: Option<KernelState>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    log: Vec<String>,
    what: String,
    /// Rounds end with the `synproxy_ebpf_probes` line (else with `synproxy`).
    ebpf: bool,
}

/// How the agent ended.
#[derive(Debug)]
pub struct Stopped {
    pub pid: u32,
    /// Kernel state before the agent started.
    pub before: KernelState,
    /// Its events and objects, when it was seen attached.
    pub owned: Option<KernelState>,
    pub exit_ok: bool,
    /// Exit code, or 128 + signal number.
    pub exit_code: i32,
    pub elapsed: Duration,
    pub stderr: Vec<String>,
    /// Stdout lines not taken before the agent exited.
    pub stdout: Vec<String>,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

impl LiveAgent {
    /// `agent --signal stdin --log-format telegraf --netns NAME [extra]` from the
    /// caller's netns, waiting until its probes are attached, plus one round.
    pub fn start(agent: &Path, netns: &Netns, extra: &[String]) -> Result<Self> {
        Self::start_with(agent, netns, extra, &Launch::Direct, true)
    }

    /// [`LiveAgent::start`], launched as `launch` says; without `ebpf` the agent
    /// runs with `--no-ebpf` and a round ends with its `synproxy` line.
    pub fn start_with(
        agent: &Path,
        netns: &Netns,
        extra: &[String],
        launch: &Launch,
        ebpf: bool,
    ) -> Result<Self> {
        let mut args = vec![
            "--signal".to_string(),
            "stdin".to_string(),
            "--log-format".to_string(),
            "telegraf".to_string(),
            "--netns".to_string(),
            netns.name().to_string(),
        ];
        if !ebpf {
            args.push("--no-ebpf".to_string());
        }
        args.extend_from_slice(extra);
        let mut live = Self::spawn(agent, &args, launch)?;
        live.ebpf = ebpf;
        if ebpf {
            live.wait_attached(ATTACH_TIMEOUT)?;
        }
        // A first round sets the agent's baseline; what the caller does next is
        // reported in the following round.
        live.sample().context("first round of the agent")?;
        Ok(live)
    }

    /// Starts `agent ARGS` as `launch` says, without waiting for anything.
    pub fn spawn(agent: &Path, args: &[String], launch: &Launch) -> Result<Self> {
        let before = KernelState::now()?;
        let mut cmd = match launch {
            Launch::Direct => Command::new(agent),
            Launch::PidNamespace { helper } => {
                let mut c = Command::new(helper);
                c.arg(crate::pidns::HELPER_FLAG).arg(agent);
                c
            }
            Launch::Caps { helper, caps } => {
                let mut c = Command::new(helper);
                c.arg(crate::caps::HELPER_FLAG).arg(caps).arg(agent);
                c
            }
        };
        let what = match launch {
            Launch::Direct => format!("`{} {}`", agent.display(), args.join(" ")),
            Launch::PidNamespace { .. } => format!(
                "`{} {}` (PID 1 of a new PID namespace)",
                agent.display(),
                args.join(" ")
            ),
            Launch::Caps { caps, .. } => format!(
                "`{} {}` (uid 65534, capabilities {caps})",
                agent.display(),
                args.join(" ")
            ),
        };
        let started = Instant::now();
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take();
        let lines = pump(child.stdout.take().context("agent stdout")?);
        let stderr = pump(child.stderr.take().context("agent stderr")?);
        let agent_pid = match launch {
            Launch::Direct | Launch::Caps { .. } => child.id(),
            Launch::PidNamespace { .. } => {
                match crate::pidns::wait_child_of(child.id(), Duration::from_secs(10)) {
                    Ok(pid) => pid,
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e).with_context(|| format!("starting {what}"));
                    }
                }
            }
        };
        Ok(LiveAgent {
            child,
            agent_pid,
            started,
            before,
            owned: None,
            stdin,
            lines,
            stderr,
            log: Vec::new(),
            what,
            ebpf: true,
        })
    }

    /// Host pid of the agent process.
    pub fn pid(&self) -> u32 {
        self.agent_pid
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The agent's kprobe events (empty until it was seen attached).
    pub fn owned_events(&self) -> BTreeSet<String> {
        self.owned
            .as_ref()
            .map(|o| o.events.clone())
            .unwrap_or_default()
    }

    /// Waits for the agent's `eBPF probes attached` log line and records the
    /// events and objects that appeared since it started as its own. Fails at
    /// once when the agent exits, disables eBPF, or says it will not retry.
    /// Returns the time from spawn to the log line.
    pub fn wait_attached(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr_lines();
            if log.iter().any(|l| l.contains(ATTACHED_LOG)) {
                let elapsed = self.started.elapsed();
                self.owned = Some(KernelState::now()?.since(&self.before));
                return Ok(elapsed);
            }
            let hopeless = log.iter().find(|l| {
                l.contains("eBPF disabled") || l.contains("until nf_synproxy_core is reloaded")
            });
            if let Some(line) = hopeless {
                bail!(
                    "{}: eBPF did not attach: {line}; stderr: {}",
                    self.what,
                    log.join(" | ")
                );
            }
            if let Some(status) = self.child.try_wait()? {
                let log = self.stderr_lines();
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    self.what,
                    log.join(" | ")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no `{ATTACHED_LOG}` within {timeout:?}; stderr: {}",
                    self.what,
                    log.join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the agent logged so far.
    pub fn stderr_lines(&mut self) -> Vec<String> {
        self.log.extend(self.stderr.try_iter());
        self.log.clone()
    }

    /// The stdout lines received since the last call (interval mode).
    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One round: a newline on stdin, then every line up to the
    /// `synproxy_ebpf_probes` line that ends a round.
    pub fn sample(&mut self) -> Result<Vec<Line>> {
        let stdin = self.stdin.as_mut().context("agent stdin already closed")?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let deadline = Instant::now() + SAMPLE_TIMEOUT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).with_context(|| {
                format!("{}: no complete round within {SAMPLE_TIMEOUT:?}", self.what)
            })?;
            let parsed = line_protocol::parse_line(&line)
                .with_context(|| format!("output of {}", self.what))?;
            let last = if self.ebpf {
                parsed.measurement == "synproxy_ebpf_probes"
            } else {
                parsed.measurement == "synproxy"
            };
            out.push(parsed);
            if last {
                return Ok(out);
            }
        }
    }

    /// Sends `signal` to the agent process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.agent_pid;
        // SAFETY: kill() on the agent's pid; it is our child (or the child of our
        // child, the helper, which reaps it only after it exited) and not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the agent (closing stdin, or `signal`) and measures how long it took.
    pub fn stop(mut self, signal: Option<libc::c_int>) -> Result<Stopped> {
        let started = Instant::now();
        match signal {
            None => drop(self.stdin.take()),
            Some(sig) => self.signal(sig)?,
        }
        self.wait_exit(started)
    }

    /// Waits for the agent (and a PID-namespace helper) to exit.
    pub fn wait_exit(mut self, since: Instant) -> Result<Stopped> {
        let deadline = since + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {EXIT_TIMEOUT:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = since.elapsed();
        // The pump threads end with the pipes; the rest of stderr is there.
        let stderr_deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.log.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > stderr_deadline => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let mut stdout = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > stderr_deadline => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        Ok(Stopped {
            stdout,
            pid: self.agent_pid,
            before: std::mem::take(&mut self.before),
            owned: self.owned.take(),
            exit_ok: status.success(),
            exit_code: exit_code(status),
            elapsed,
            stderr: std::mem::take(&mut self.log),
        })
    }
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if self.agent_pid != self.child.id() {
                // SAFETY: kill() on the agent's pid, not yet reaped by the helper.
                unsafe { libc::kill(self.agent_pid as libc::pid_t, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Rounds of interval-mode output. With eBPF a round is every line up to and
/// including the `synproxy_ebpf_probes` line that ends it (the lines of a round
/// should share one timestamp: see [`mixed_timestamps`]); without eBPF a round
/// is a run of lines with one timestamp. Lines that do not parse are errors.
pub fn split_rounds(lines: &[String], ebpf: bool) -> Result<Vec<Vec<Line>>> {
    let mut rounds: Vec<Vec<Line>> = Vec::new();
    let mut current: Vec<Line> = Vec::new();
    for raw in lines {
        let line = line_protocol::parse_line(raw).with_context(|| format!("agent line {raw:?}"))?;
        if !ebpf
            && current
                .last()
                .is_some_and(|l: &Line| l.timestamp != line.timestamp)
        {
            rounds.push(std::mem::take(&mut current));
        }
        let ends = line.measurement == "synproxy_ebpf_probes";
        current.push(line);
        if ends {
            rounds.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        rounds.push(current);
    }
    Ok(rounds)
}

/// Rounds whose lines do not all carry one timestamp.
pub fn mixed_timestamps(rounds: &[Vec<Line>]) -> usize {
    rounds
        .iter()
        .filter(|r| r.windows(2).any(|w| w[0].timestamp != w[1].timestamp))
        .count()
}

/// eBPF view of one namespace in a round: the counter summed over families, the
/// reconcile status of each family line, and the probe misses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EbpfView {
    pub lines: usize,
    pub statuses: Vec<String>,
    /// `probe_misses` of the round's probes line (all namespaces).
    pub misses: u64,
}

/// Sum of `counter` over the `synproxy_ebpf` lines of `netns`.
pub fn ebpf_count(lines: &[Line], netns: &str, counter: &str) -> Result<(u64, EbpfView)> {
    let mut total = 0;
    let mut view = EbpfView::default();
    for line in lines.iter().filter(|l| {
        l.measurement == "synproxy_ebpf" && l.tags.get("netns").map(String::as_str) == Some(netns)
    }) {
        total += line.counter(counter)?;
        view.lines += 1;
        match line.fields.get("reconcile") {
            Some(FieldValue::Str(s)) => view.statuses.push(s.clone()),
            other => bail!("reconcile field {other:?} in {line:?}"),
        }
    }
    if view.lines != 2 {
        bail!(
            "expected 2 synproxy_ebpf lines (ipv4, ipv6) for netns {netns}, got {}",
            view.lines
        );
    }
    // Losses are reported for all namespaces at once, on the probes line.
    if let Some(probes) = lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
    {
        view.misses = probes.counter("probe_misses")?;
    }
    Ok((total, view))
}

/// The `probe_type` of the first `synproxy_ebpf_probes` line.
pub fn probe_type(lines: &[Line]) -> Option<String> {
    lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .and_then(|l| match l.fields.get("probe_type") {
            Some(crate::line_protocol::FieldValue::Str(s)) => Some(s.clone()),
            _ => None,
        })
}

/// The probe type an agent with `--probes fentry` must end up with here:
/// fentry where `nf_synproxy_core` has module BTF (the VM kernels build
/// SYNPROXY as modules; Debian's 5.10 has no module BTF), kprobe otherwise
/// (the documented fallback).
pub fn expected_probe_type() -> &'static str {
    if Path::new("/sys/kernel/btf/nf_synproxy_core").exists() {
        "fentry"
    } else {
        "kprobe"
    }
}

/// Sum of every `*_missed` field of the `synproxy_ebpf_probes` line.
pub fn probe_misses(lines: &[Line]) -> Result<(u64, bool)> {
    let line = lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .context("no synproxy_ebpf_probes line")?;
    let mut missed = 0;
    for name in line.fields.keys().filter(|k| k.ends_with("_missed")) {
        missed += line.counter(name)?;
    }
    Ok((missed, line.counter("attached")? == 1))
}

/// BPF programs and maps with the agent's names, of any agent.
pub fn agent_objects() -> Result<Vec<BpfObject>> {
    let mut out = Vec::new();
    for (id, name) in bpf_objects::list(Kind::Prog).context("listing BPF programs")? {
        if name.starts_with(PROGRAM_PREFIX) {
            out.push((true, id, name));
        }
    }
    for (id, name) in bpf_objects::list(Kind::Map).context("listing BPF maps")? {
        if MAP_NAMES.contains(&name.as_str()) {
            out.push((false, id, name));
        }
    }
    Ok(out)
}

/// What of a stopped agent is still in the kernel: its kprobe events and
/// profile lines and the BPF programs and maps it had created (when it was seen
/// attached), else every event and object that appeared since it started (right
/// only when no other agent started meanwhile), and its process.
pub fn leftovers(stopped: &Stopped) -> Result<Vec<String>> {
    let now = KernelState::now()?;
    let mine = match &stopped.owned {
        Some(owned) => KernelState {
            events: owned.events.intersection(&now.events).cloned().collect(),
            objects: owned
                .objects
                .iter()
                .filter(|o| now.objects.contains(o))
                .cloned()
                .collect(),
        },
        None => now.since(&stopped.before),
    };
    let (events, profile) = kprobe_lines_for(&mine.events);
    let mut left: Vec<String> = events
        .into_iter()
        .map(|l| format!("kprobe_events: {l}"))
        .chain(
            profile
                .into_iter()
                .map(|l| format!("kprobe_profile: {}", l.trim())),
        )
        .collect();
    for (prog, id, name) in &mine.objects {
        let kind = if *prog { "program" } else { "map" };
        left.push(format!("BPF {kind} {id} {name}"));
    }
    let pid = stopped.pid;
    if Path::new(&format!("/proc/{pid}")).exists() {
        left.push(format!("/proc/{pid} still exists"));
    }
    Ok(left)
}

/// [`leftovers`] until empty (programs and maps are freed after an RCU grace
/// period), at most `within`.
pub fn wait_clean(stopped: &Stopped, within: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let left = leftovers(stopped)?;
        if left.is_empty() || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (generously) until the agent `pid` blocks or catches SIGTERM.
pub fn wait_signals_handled(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::proc_signals::agent_takes_sigterm(pid) {
        if Instant::now() > deadline {
            bail!("timed out after 60 s waiting for the agent (pid {pid}) to take SIGTERM over");
        }
        std::thread::yield_now();
    }
    Ok(())
}

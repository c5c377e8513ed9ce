//! The agent running with eBPF for the length of a check: started before the
//! traffic (`--signal stdin`), asked for one sample after it, then stopped by
//! closing stdin or by a signal. Also the checks that nothing of it stays in the
//! kernel afterwards: kprobe events, kprobe_profile lines, BPF programs and maps.

use crate::line_protocol::{self, FieldValue, Line};
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Probes the agent attaches (sources/ebpf.rs PROBES).
pub const PROBE_COUNT: usize = 9;
/// Program names of synproxy-ebpf (BPF object names are cut at 15 bytes).
pub const PROGRAM_PREFIX: &str = "spx_";
/// Map names of synproxy-ebpf (and aya-log's ring buffer).
pub const MAP_NAMES: [&str; 6] = [
    "COUNTS",
    "RATES",
    "DIAG",
    "ACK_STASH",
    "HOOK_STASH",
    "AYA_LOGS",
];
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Item 5 of the eBPF issue: exit within 1 s of SIGTERM/SIGINT/stdin EOF.
pub const EXIT_LIMIT: Duration = Duration::from_secs(1);

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

/// Lines of kprobe_events / kprobe_profile that belong to agent `pid`.
pub fn kprobe_lines_of(pid: u32) -> (Vec<String>, Vec<String>) {
    let tag = format!("spx{pid}_");
    let pick = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&tag))
            .map(str::to_string)
            .collect()
    };
    (
        pick(tracefs_file("kprobe_events")),
        pick(tracefs_file("kprobe_profile")),
    )
}

/// A BPF program (`prog`) or map of the agent: (prog, id, name).
pub type BpfObject = (bool, u32, String);

pub struct LiveAgent {
    child: Child,
    /// BPF programs and maps that appeared while this agent started.
    owned: Vec<BpfObject>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    what: String,
}

/// How the agent ended.
#[derive(Debug)]
pub struct Stopped {
    pub pid: u32,
    pub owned: Vec<BpfObject>,
    pub exit_ok: bool,
    pub elapsed: Duration,
    pub stderr: Vec<String>,
}

fn pump<R: std::io::Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl LiveAgent {
    /// `agent --signal stdin --log-format telegraf --netns NAME [extra]` from the
    /// caller's netns, waiting until its probes are attached.
    pub fn start(agent: &Path, netns: &Netns, extra: &[String]) -> Result<Self> {
        let mut args = vec![
            "--signal".to_string(),
            "stdin".to_string(),
            "--log-format".to_string(),
            "telegraf".to_string(),
            "--netns".to_string(),
            netns.name().to_string(),
        ];
        args.extend_from_slice(extra);
        let what = format!("`{} {}`", agent.display(), args.join(" "));
        let existing = agent_objects()?;
        let mut child = Command::new(agent)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take();
        let lines = pump(child.stdout.take().context("agent stdout")?);
        let stderr = pump(child.stderr.take().context("agent stderr")?);
        let mut live = LiveAgent {
            child,
            owned: Vec::new(),
            stdin,
            lines,
            stderr,
            what,
        };
        live.wait_attached()?;
        // Other agents may be running: the objects that are new are this one's.
        live.owned = agent_objects()?
            .into_iter()
            .filter(|o| !existing.contains(o))
            .collect();
        // A first round sets the agent's baseline; what the caller does next is
        // reported in the following round.
        live.sample().context("first round of the agent")?;
        Ok(live)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_attached(&mut self) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            let (events, _) = kprobe_lines_of(self.pid());
            if events.len() == PROBE_COUNT {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    self.what,
                    self.stderr_lines().join(" | ")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {} of {PROBE_COUNT} kprobe events after {ATTACH_TIMEOUT:?}; stderr: {}",
                    self.what,
                    events.len(),
                    self.stderr_lines().join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the agent logged so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
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
            let last = parsed.measurement == "synproxy_ebpf_probes";
            out.push(parsed);
            if last {
                return Ok(out);
            }
        }
    }

    /// Stops the agent (closing stdin, or `signal`) and measures how long it took.
    pub fn stop(mut self, signal: Option<libc::c_int>) -> Result<Stopped> {
        let pid = self.pid();
        let started = Instant::now();
        match signal {
            None => drop(self.stdin.take()),
            Some(sig) => {
                // SAFETY: kill() on our own child's pid; it has not been reaped yet.
                if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
                    bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
                }
            }
        }
        let deadline = started + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within 10 s", self.what);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = started.elapsed();
        // The pump threads end with the pipes.
        std::thread::sleep(Duration::from_millis(20));
        Ok(Stopped {
            pid,
            owned: std::mem::take(&mut self.owned),
            exit_ok: status.success(),
            elapsed,
            stderr: self.stderr.try_iter().collect(),
        })
    }
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// eBPF view of one namespace in a round: the counter summed over families, the
/// reconcile status of each family line, and the probe misses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EbpfView {
    pub lines: usize,
    pub statuses: Vec<String>,
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
        view.misses += line.counter("probe_misses")?;
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
    Ok((total, view))
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

mod bpf {
    //! Enumerating BPF programs and maps by name (what `bpftool prog/map list`
    //! does), without bpftool: the guest has only busybox.

    use std::os::fd::{FromRawFd, OwnedFd};

    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
        // SAFETY: `attr` is a zeroed 128-byte buffer, larger than every bpf_attr
        // variant used here; the kernel reads/writes only within its size.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of::<[u64; 16]>() as libc::c_uint,
            )
        }
    }

    /// Names of all loaded programs (`prog`) or maps: `(id, name)`.
    pub fn names(prog: bool) -> std::io::Result<Vec<(u32, String)>> {
        let (next, by_id, name_at) = if prog {
            (BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, 64)
        } else {
            (BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID, 24)
        };
        let mut out = Vec::new();
        let mut id = 0u32;
        loop {
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id);
            if bpf(next, &mut attr) != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    return Ok(out);
                }
                return Err(e);
            }
            id = (attr[0] >> 32) as u32;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id);
            let fd = bpf(by_id, &mut attr);
            if fd < 0 {
                continue; // freed in between
            }
            // SAFETY: a new descriptor returned by the kernel, owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut info = [0u8; 256];
            let mut attr = [0u64; 16];
            use std::os::fd::AsRawFd;
            attr[0] = fd.as_raw_fd() as u64 | ((info.len() as u64) << 32);
            attr[1] = info.as_mut_ptr() as u64;
            if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
                continue;
            }
            let name = &info[name_at..name_at + 16];
            let end = name.iter().position(|&b| b == 0).unwrap_or(16);
            out.push((id, String::from_utf8_lossy(&name[..end]).into_owned()));
        }
    }
}

/// BPF programs and maps with the agent's names, of any agent.
pub fn agent_objects() -> Result<Vec<BpfObject>> {
    let mut out = Vec::new();
    for (id, name) in bpf::names(true).context("listing BPF programs")? {
        if name.starts_with(PROGRAM_PREFIX) {
            out.push((true, id, name));
        }
    }
    for (id, name) in bpf::names(false).context("listing BPF maps")? {
        if MAP_NAMES.contains(&name.as_str()) {
            out.push((false, id, name));
        }
    }
    Ok(out)
}

/// What of a stopped agent is still in the kernel: kprobe events and profile
/// lines of its pid, and the BPF programs and maps it had created.
pub fn leftovers(stopped: &Stopped) -> Result<Vec<String>> {
    let pid = stopped.pid;
    let (events, profile) = kprobe_lines_of(pid);
    let mut left: Vec<String> = events
        .into_iter()
        .map(|l| format!("kprobe_events: {l}"))
        .chain(
            profile
                .into_iter()
                .map(|l| format!("kprobe_profile: {}", l.trim())),
        )
        .collect();
    let now = agent_objects()?;
    for (prog, id, name) in stopped.owned.iter().filter(|o| now.contains(o)) {
        let kind = if *prog { "program" } else { "map" };
        left.push(format!("BPF {kind} {id} {name}"));
    }
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

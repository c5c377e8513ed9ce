//! `cargo xtask bench --compare`: the agent's cost per round beside the
//! cheapest /proc collector there is (a bare C loop) and collectd's synproxy
//! plugin, in one run on the same file, then the agent with `--netns all`
//! over 1, 100 and 1,000 namespaces created for the purpose, with SYNPROXY's
//! file alone and with every /proc source (the TCP stack's counters and
//! conntrack's too).
//!
//! CPU is the kernel's accounting of every thread of each process, exited
//! ones included: `wait4`'s rusage after the process was stopped (start-up
//! included, so the agent and collectd pay theirs). The three programs run
//! side by side over the same seconds (their starts a third of an interval
//! apart), so the machine's load weighs on all of them alike.

use super::status_kib;
use crate::cargo::{cargo, is_root, workspace_root};
use crate::vm::host::Apt;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const STAT_FILE: &str = "/proc/net/stat/synproxy";
const INTERVAL: Duration = Duration::from_millis(100);
/// Prefix of the namespaces the bench creates (`ip netns add`).
const NETNS_PREFIX: &str = "spxbench-";

/// The performance targets the comparison is judged against.
const TARGET_VS_BARE: f64 = 1.0;
const TARGET_VS_COLLECTD: f64 = 0.5;
const TARGET_1000_NETNS_CPU: Duration = Duration::from_millis(20);
/// CPU per round with every /proc source on (SYNPROXY, the TCP stack's
/// counters, conntrack's) against SYNPROXY's file alone.
const TARGET_ALL_SOURCES: f64 = 2.0;
/// The agent's flags for SYNPROXY's file alone (what it read before the TCP
/// stack's and conntrack's sources).
const SYNPROXY_ONLY: [&str; 2] = ["--no-nstat", "--no-conntrack"];

#[derive(Debug, Clone)]
pub struct CompareArgs {
    /// Seconds each side-by-side measurement runs.
    pub secs: u64,
    /// Namespace counts for the `--netns all` scale runs (empty: none).
    pub netns_sizes: Vec<usize>,
}

/// Sleeps `duration`, in steps, failing as soon as an interrupt came.
fn sleep_checked(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    loop {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// What a run measured.
pub struct Report {
    compared: Compared,
    scale: Vec<ScaleRow>,
}

impl Report {
    /// The smoke run's check: every figure was produced (not the targets:
    /// machines vary).
    pub fn check_produced(&self) -> Result<()> {
        let c = &self.compared;
        for u in [&c.bare, &c.collectd, &c.agent] {
            if u.cpu.is_zero() || u.rounds < 1.0 || u.rss_kib == 0 {
                bail!("{}: no CPU, rounds or RSS measured ({u:?})", u.name);
            }
        }
        for r in &self.scale {
            let alone = &r.synproxy_only;
            if r.rounds == 0
                || r.read < r.created
                || r.walls.is_empty()
                || r.cpu.is_zero()
                || alone.rounds == 0
                || alone.cpu.is_zero()
            {
                bail!(
                    "--netns all over {} namespaces: figures missing ({} read, {} rounds, {} wall times)",
                    r.created,
                    r.read,
                    r.rounds,
                    r.walls.len()
                );
            }
        }
        Ok(())
    }
}

pub fn run(args: &CompareArgs) -> Result<Report> {
    if !is_root() {
        bail!("cargo xtask bench --compare needs root (modprobe, network namespaces, apt-get)");
    }
    crate::interrupt::catch();
    let tools = prepare()?;
    let machine = Machine::describe();
    println!("{}", machine.text());
    let compared = compare(&tools, args.secs)?;
    compared.print();
    let sizes: Vec<usize> = args
        .netns_sizes
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .collect();
    let mut rows = Vec::new();
    if !sizes.is_empty() {
        rows = scale(&tools, &sizes, (args.secs / 3).max(3))?;
        print_scale(&rows);
    }
    println!("load average at the end: {}", load_average());
    Ok(Report {
        compared,
        scale: rows,
    })
}

/// What the bench runs.
struct Tools {
    agent: PathBuf,
    bare: PathBuf,
    collectd: PathBuf,
    collectd_conf: PathBuf,
    logs: PathBuf,
}

fn prepare() -> Result<Tools> {
    // nf_synproxy_core gives every namespace its stat file (built in on some
    // kernels, where modprobe has nothing to do).
    let _ = Command::new("modprobe")
        .arg("nf_synproxy_core")
        .stderr(Stdio::null())
        .status();
    if !Path::new(STAT_FILE).exists() {
        bail!("{STAT_FILE} does not exist even after `modprobe nf_synproxy_core`");
    }
    let mut apt = Apt::default();
    let mut missing = Vec::new();
    if which("cc").is_none() {
        missing.push("gcc");
    }
    if !Path::new("/usr/sbin/collectd").exists()
        || !Path::new("/usr/lib/collectd/synproxy.so").exists()
    {
        missing.push("collectd-core");
    }
    if which("ip").is_none() {
        missing.push("iproute2");
    }
    apt.ensure_installed(&missing)?;

    crate::ebpf_toolchain::ensure()?;
    cargo(&["build", "--release", "--package", "synproxy-user"])?;
    let root = workspace_root();
    let dir = root.join("target/bench");
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let source = dir.join("bare_reader.c");
    fs::write(&source, include_str!("bare_reader.c"))?;
    let bare = dir.join("bare-reader");
    let cc = which("cc").context("no C compiler (cc) even after installing gcc")?;
    let status = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&bare)
        .arg(&source)
        .status()
        .context("running cc")?;
    if !status.success() {
        bail!("cc could not build {}", source.display());
    }

    let collectd_dir = dir.join("collectd");
    fs::create_dir_all(&collectd_dir)?;
    let collectd_conf = collectd_dir.join("collectd.conf");
    // No write plugin, as asked; the logfile plugin at "err" only keeps
    // collectd from printing "no write plugin" lines every interval, which
    // would be its cost, not the plugin's (collectd at its cheapest).
    fs::write(
        &collectd_conf,
        format!(
            "Interval 0.1\n\
             BaseDir \"{dir}\"\n\
             PIDFile \"{dir}/collectd.pid\"\n\
             PluginDir \"/usr/lib/collectd\"\n\
             TypesDB \"/usr/share/collectd/types.db\"\n\
             LoadPlugin logfile\n\
             <Plugin logfile>\n  LogLevel \"err\"\n  File STDERR\n</Plugin>\n\
             LoadPlugin synproxy\n",
            dir = collectd_dir.display()
        ),
    )?;
    Ok(Tools {
        agent: root.join("target/release/synproxy-agent"),
        bare,
        collectd: PathBuf::from("/usr/sbin/collectd"),
        collectd_conf,
        logs,
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The machine, as the table in docs/performance.md describes it.
struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    load: String,
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            kernel,
            load: load_average(),
        }
    }

    fn text(&self) -> String {
        format!(
            "machine: {} CPUs ({}), kernel {}; load average at the start: {}",
            self.cpus, self.model, self.kernel, self.load
        )
    }
}

/// `/proc/loadavg`'s three averages and runnable/total tasks.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// What one process cost.
#[derive(Clone, Debug)]
struct Usage {
    name: &'static str,
    cpu: Duration,
    rounds: f64,
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
}

impl Usage {
    fn cpu_per_round(&self) -> Duration {
        if self.rounds <= 0.0 {
            return Duration::ZERO;
        }
        self.cpu.div_f64(self.rounds)
    }
}

/// A measured child; killed if dropped while still running.
struct Running {
    name: &'static str,
    child: Option<Child>,
    started: Instant,
    log: PathBuf,
}

impl Running {
    fn start(name: &'static str, mut command: Command, logs: &Path) -> Result<Self> {
        let log = logs.join(format!("{name}.stderr"));
        let stderr = fs::File::create(&log)?;
        command.stderr(stderr);
        if command.get_program().is_empty() {
            bail!("{name}: no program");
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name,
            child: Some(child),
            started: Instant::now(),
            log,
        })
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Reads its memory, stops it (SIGTERM) and takes the kernel's account
    /// of its CPU time, every thread included.
    fn stop(mut self, interval: Duration) -> Result<Usage> {
        let Some(mut child) = self.child.take() else {
            bail!("{}: not running", self.name);
        };
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{} exited early ({status}); its stderr ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        let pid = child.id() as i32;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let elapsed = self.started.elapsed();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (cpu, _) = wait_with_rusage(pid, Duration::from_secs(5))
            .with_context(|| format!("waiting for {} to exit", self.name))?;
        Ok(Usage {
            name: self.name,
            cpu,
            rounds: elapsed.as_secs_f64() / interval.as_secs_f64(),
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
            anon_kib: status_kib(&status, "RssAnon:").unwrap_or(0),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `pid` to exit (SIGKILL after `grace`) and returns its CPU time
/// (user + system, all threads, exited ones included) and exit status.
fn wait_with_rusage(pid: i32, grace: Duration) -> Result<(Duration, i32)> {
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: `usage` is a plain C struct wait4 fills in; both pointers
        // refer to locals that outlive the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; WNOHANG never blocks. The child is ours, and the
        // std Child handle is not used to wait for it afterwards.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            return Ok((tv(usage.ru_utime) + tv(usage.ru_stime), status));
        }
        if rc < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline && !killed {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn agent_command(tools: &Tools, extra: &[&str]) -> Command {
    let mut command = Command::new(&tools.agent);
    command
        .args(["--interval", "100ms", "--no-ebpf"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Part 1: the three side by side.
struct Compared {
    secs: u64,
    bare: Usage,
    collectd: Usage,
    agent: Usage,
}

fn compare(tools: &Tools, secs: u64) -> Result<Compared> {
    println!(
        "\n== {STAT_FILE} every 100 ms for {secs} s: bare reader, collectd's synproxy plugin and synproxy-agent side by side"
    );
    let mut bare = Command::new(&tools.bare);
    bare.arg(STAT_FILE)
        .arg(INTERVAL.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut collectd = Command::new(&tools.collectd);
    collectd
        .arg("-f")
        .arg("-C")
        .arg(&tools.collectd_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // The same file as the other two: SYNPROXY's alone.
    let agent = agent_command(tools, &SYNPROXY_ONLY);

    let stagger = INTERVAL / 3;
    let bare = Running::start("bare reader", bare, &tools.logs)?;
    sleep_checked(stagger)?;
    let collectd = Running::start("collectd", collectd, &tools.logs)?;
    sleep_checked(stagger)?;
    let agent = Running::start("synproxy-agent", agent, &tools.logs)?;
    let _ = (bare.pid(), collectd.pid(), agent.pid());
    sleep_checked(Duration::from_secs(secs))?;
    // Stopped in the order started, so each ran for the same time.
    let bare = bare.stop(INTERVAL)?;
    let collectd = collectd.stop(INTERVAL)?;
    let agent = agent.stop(INTERVAL)?;
    Ok(Compared {
        secs,
        bare,
        collectd,
        agent,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

impl Compared {
    fn print(&self) {
        println!(
            "{:<16} {:>12} {:>8} {:>11} {:>11} {:>11}",
            "program", "CPU/round", "rounds", "RSS", "peak RSS", "anon RSS"
        );
        for u in [&self.bare, &self.collectd, &self.agent] {
            println!(
                "{:<16} {:>9.1} us {:>8.0} {:>11} {:>11} {:>11}",
                u.name,
                u.cpu_per_round().as_secs_f64() * 1e6,
                u.rounds,
                mib(u.rss_kib),
                mib(u.hwm_kib),
                mib(u.anon_kib)
            );
        }
        let ratio = |a: &Usage, b: &Usage| {
            a.cpu_per_round().as_secs_f64() / b.cpu_per_round().as_secs_f64().max(1e-9)
        };
        let vs_bare = ratio(&self.agent, &self.bare);
        let vs_collectd = ratio(&self.agent, &self.collectd);
        let rss = self.agent.rss_kib as f64 / (self.collectd.rss_kib.max(1)) as f64;
        println!(
            "CPU per round: agent/bare {vs_bare:.2}x (target <= {TARGET_VS_BARE:.1}x: {}), agent/collectd {vs_collectd:.2}x (target <= {TARGET_VS_COLLECTD:.1}x: {})",
            verdict(vs_bare <= TARGET_VS_BARE),
            verdict(vs_collectd <= TARGET_VS_COLLECTD)
        );
        println!(
            "RSS: agent/collectd {rss:.2}x (target <= 1.0x: {}); peak {:.2}x; anonymous {:.2}x",
            verdict(rss <= 1.0),
            self.agent.hwm_kib as f64 / (self.collectd.hwm_kib.max(1)) as f64,
            self.agent.anon_kib as f64 / (self.collectd.anon_kib.max(1)) as f64,
        );
        println!(
            "({} s each, side by side; CPU from wait4's rusage of each process, start-up included)",
            self.secs
        );
    }
}

/// The bench's namespaces; deleted on drop (also after an error or Ctrl-C).
struct Namespaces {
    created: usize,
}

fn ip_batch(commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start ip")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Namespaces {
    /// Removes namespaces a previous run left behind (killed before cleaning up).
    fn new() -> Result<Self> {
        let stale: String = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(NETNS_PREFIX))
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if !stale.is_empty() {
            ip_batch(&stale)?;
        }
        Ok(Self { created: 0 })
    }

    fn grow_to(&mut self, count: usize) -> Result<()> {
        let commands: String = (self.created..count)
            .map(|i| format!("netns add {NETNS_PREFIX}{i}\n"))
            .collect();
        if !commands.is_empty() {
            ip_batch(&commands)?;
        }
        self.created = self.created.max(count);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let commands: String = (0..self.created)
            .map(|i| format!("netns del {NETNS_PREFIX}{i}\n"))
            .collect();
        if !commands.is_empty() {
            if let Err(e) = ip_batch(&commands) {
                eprintln!("bench: deleting the bench's namespaces: {e:#}");
            }
        }
    }
}

/// Part 2: one size.
struct ScaleRow {
    created: usize,
    /// Namespaces the agent read per round (the bench's and any others).
    read: usize,
    rounds: u64,
    cpu: Duration,
    walls: Vec<Duration>,
    rss_kib: u64,
    /// The same with SYNPROXY's file alone ([`SYNPROXY_ONLY`]).
    synproxy_only: CpuRun,
}

/// One `--netns all` run in interval mode.
struct CpuRun {
    rounds: u64,
    lines: u64,
    cpu: Duration,
    rss_kib: u64,
}

impl CpuRun {
    fn cpu_per_round(&self) -> Duration {
        self.cpu / u32::try_from(self.rounds.max(1)).unwrap_or(u32::MAX)
    }
}

impl ScaleRow {
    fn cpu_per_round(&self) -> Duration {
        self.cpu / u32::try_from(self.rounds.max(1)).unwrap_or(u32::MAX)
    }

    /// CPU per round, every source on against SYNPROXY's file alone.
    fn all_sources_ratio(&self) -> f64 {
        let alone = self.synproxy_only.cpu_per_round().as_secs_f64();
        self.cpu_per_round().as_secs_f64() / alone.max(1e-9)
    }
    fn wall_median(&self) -> Duration {
        let mut w = self.walls.clone();
        w.sort();
        w.get(w.len() / 2).copied().unwrap_or_default()
    }
}

fn scale(tools: &Tools, sizes: &[usize], secs: u64) -> Result<Vec<ScaleRow>> {
    let mut namespaces = Namespaces::new()?;
    let mut rows = Vec::new();
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    for &size in &sizes {
        println!("\n== --netns all over {size} namespaces created by the bench ({secs} s)");
        namespaces.grow_to(size)?;
        rows.push(scale_one(tools, size, secs)?);
    }
    drop(namespaces);
    Ok(rows)
}

/// Counts rounds (distinct timestamps) and lines of the agent's stdout.
fn count_rounds(
    stdout: impl Read + Send + 'static,
) -> (Arc<AtomicU64>, mpsc::Receiver<(u64, u64)>) {
    let rounds = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&rounds);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut last_ts = String::new();
        let mut lines = 0u64;
        let mut rounds = 0u64;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.starts_with("synproxy,") && !line.starts_with("synproxy ") {
                continue;
            }
            lines += 1;
            let ts = line.rsplit(' ').next().unwrap_or_default();
            if ts != last_ts {
                rounds += 1;
                seen.store(rounds, Ordering::SeqCst);
                last_ts = ts.to_string();
            }
        }
        let _ = tx.send((rounds, lines));
    });
    (rounds, rx)
}

fn scale_one(tools: &Tools, size: usize, secs: u64) -> Result<ScaleRow> {
    let synproxy_only = cpu_run(tools, &SYNPROXY_ONLY, secs)?;
    let all = cpu_run(tools, &[], secs)?;
    let read = usize::try_from(all.lines / all.rounds).unwrap_or(0);

    // Wall time: rounds on request (--signal stdin), each round's duration
    // as the agent measured it (synproxy_agent_last_round_duration_seconds).
    let walls = wall_times(tools, 10)?;
    Ok(ScaleRow {
        created: size,
        read,
        rounds: all.rounds,
        cpu: all.cpu,
        walls,
        rss_kib: all.rss_kib,
        synproxy_only,
    })
}

/// The agent with `--netns all` and `extra` for `secs` in interval mode:
/// stdout counted by the bench (rounds that overran their interval are
/// skipped by the agent, so rounds are counted, not assumed).
fn cpu_run(tools: &Tools, extra: &[&str], secs: u64) -> Result<CpuRun> {
    let mut args = vec!["--netns", "all"];
    args.extend_from_slice(extra);
    let mut command = agent_command(tools, &args);
    command.stdout(Stdio::piped());
    let name = if extra.is_empty() {
        "synproxy-agent --netns all"
    } else {
        "synproxy-agent --netns all (SYNPROXY only)"
    };
    let mut running = Running::start(name, command, &tools.logs)?;
    let stdout = running
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("no stdout")?;
    let (_, counted) = count_rounds(stdout);
    sleep_checked(Duration::from_secs(secs))?;
    let usage = running.stop(INTERVAL)?;
    let (rounds, lines) = counted
        .recv_timeout(Duration::from_secs(10))
        .context("counting the agent's rounds")?;
    if rounds == 0 {
        bail!("{name} printed no round");
    }
    Ok(CpuRun {
        rounds,
        lines,
        cpu: usage.cpu,
        rss_kib: usage.rss_kib,
    })
}

fn wall_times(tools: &Tools, count: usize) -> Result<Vec<Duration>> {
    let mut command = Command::new(&tools.agent);
    command
        .args([
            "--no-ebpf",
            "--netns",
            "all",
            "--signal",
            "stdin",
            "--prometheus-listen",
            "127.0.0.1:0",
            "--stdout",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("cannot start the agent")?;
    let guard = KillOnDrop(child.id() as i32);
    let mut stdin: ChildStdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("Prometheus metrics on http://") {
                let _ = addr_tx.send(rest.trim_end_matches("/metrics").to_string());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the agent did not log its metrics address")?;
    let (rounds, _) = count_rounds(stdout);
    let mut walls = Vec::new();
    for k in 1..=count as u64 + 1 {
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while rounds.load(Ordering::SeqCst) < k {
            if Instant::now() > deadline {
                bail!("the agent did not print round {k} within 60 s");
            }
            sleep_checked(Duration::from_millis(5))?;
        }
        // Every output had the round once stdout has all of it: the next
        // request only goes once the metrics show it.
        sleep_checked(Duration::from_millis(50))?;
        let duration = last_round_duration(&addr)?;
        // The first round opens every namespace's file.
        if k > 1 {
            walls.push(duration);
        }
    }
    drop(stdin);
    drop(guard);
    let _ = child.wait();
    Ok(walls)
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
    }
}

fn last_round_duration(addr: &str) -> Result<Duration> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let value = body
        .lines()
        .find_map(|l| l.strip_prefix("synproxy_agent_last_round_duration_seconds "))
        .context("no synproxy_agent_last_round_duration_seconds on /metrics")?;
    let secs: f64 = value.trim().parse().context("round duration")?;
    Ok(Duration::from_secs_f64(secs.max(0.0)))
}

fn print_scale(rows: &[ScaleRow]) {
    println!(
        "\n{:>10} {:>10} {:>8} {:>14} {:>12} {:>7} {:>14} {:>14} {:>10}",
        "created",
        "read",
        "rounds",
        "SYNPROXY-only",
        "all sources",
        "ratio",
        "CPU/namespace",
        "wall/round",
        "RSS"
    );
    for r in rows {
        let cpu = r.cpu_per_round();
        println!(
            "{:>10} {:>10} {:>8} {:>11.2} ms {:>9.2} ms {:>6.2}x {:>11.1} us {:>11.2} ms {:>10}",
            r.created,
            r.read,
            r.rounds,
            r.synproxy_only.cpu_per_round().as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            r.all_sources_ratio(),
            cpu.as_secs_f64() * 1e6 / r.read.max(1) as f64,
            r.wall_median().as_secs_f64() * 1e3,
            mib(r.rss_kib),
        );
    }
    for r in rows {
        println!(
            "{} namespaces: every source {:.2}x the CPU per round of SYNPROXY's file alone (target <= {TARGET_ALL_SOURCES:.1}x: {})",
            r.created,
            r.all_sources_ratio(),
            verdict(r.all_sources_ratio() <= TARGET_ALL_SOURCES)
        );
    }
    if let Some(r) = rows.iter().find(|r| r.created >= 1000) {
        let cpu = r.cpu_per_round();
        println!(
            "{} namespaces: {:.2} ms CPU per round with every source (target <= {} ms: {})",
            r.created,
            cpu.as_secs_f64() * 1e3,
            TARGET_1000_NETNS_CPU.as_millis(),
            verdict(cpu <= TARGET_1000_NETNS_CPU)
        );
    }
    println!(
        "(CPU per round of the agent's `--netns all` in 100 ms rounds: SYNPROXY-only with {}, all sources the default; wall/round: the median of 10 requested rounds as the agent timed them, all sources)",
        SYNPROXY_ONLY.join(" ")
    );
}

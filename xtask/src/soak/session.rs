//! One soak run: the load and the agent started, the schedule driven
//! (signals, samples), everything stopped again in order, the summary.

use super::churn::{self, ChurnCounts};
use super::figures::{self, LogCounter, Sample};
use super::influxd::Influxd;
use super::traffic::{Connections, Pair};
use super::{http, interrupted, Stop};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WARM_UP: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// InfluxDB is killed every this long (the first time 10 s in) ...
const INFLUX_CYCLE: Duration = Duration::from_secs(30);
/// ... and started again after this long.
const INFLUX_DOWN: Duration = Duration::from_secs(10);
const SIGNAL_EVERY: Duration = Duration::from_secs(20);
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// The host's namespaces are counted this often (for their peak).
const NAMESPACES_EVERY: Duration = Duration::from_secs(5);
/// The agent's first `/metrics` answer, on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM must end the agent within this, or it is killed (and that fails the run).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DB: &str = "soak";

/// Totals the soak's threads keep.
#[derive(Debug, Default)]
struct Counts {
    stdout_lines: AtomicU64,
    scrapes_ok: AtomicU64,
    scrapes_failed: AtomicU64,
    series: AtomicU64,
    influx_kills: AtomicU64,
    influx_restarts_failed: AtomicU64,
    connections: Arc<Connections>,
    churn: Arc<ChurnCounts>,
}

/// Everything started; stopped in order on drop whatever happened.
struct Session {
    stop: Stop,
    agent: Option<Child>,
    threads: Vec<JoinHandle<()>>,
    pair: Option<Pair>,
    influx: Arc<Mutex<Influxd>>,
    /// How the agent ended when it was stopped: status and time to exit.
    stopped: Option<(Option<ExitStatus>, Duration)>,
}

impl Session {
    fn shutdown(&mut self) {
        self.stop.set();
        if let Some(mut agent) = self.agent.take() {
            let asked = Instant::now();
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
            let mut status = None;
            while asked.elapsed() < STOP_TIMEOUT {
                if let Ok(Some(s)) = agent.try_wait() {
                    status = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let took = asked.elapsed();
            if status.is_none() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
            self.stopped = Some((status, took));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.pair = None;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How the measured loop ended.
enum End {
    Finished,
    Interrupted,
    AgentDied(ExitStatus),
}

pub fn run(agent_path: &Path, dir: &Path, prefix: &str, minutes: u64) -> Result<()> {
    println!(
        "soak: {minutes} min; the first minute is the warm-up. eBPF: the agent loads its probes \
         where the kernel allows; on a host kernel without kprobes it runs from /proc only and \
         says so in a warning at start: expected here, the soak then exercises the /proc path."
    );
    let stop = Stop::default();
    let counts = Arc::new(Counts::default());
    let influx = Influxd::start(dir, dir.join("influxd.log"))?;
    influx.execute(&format!("CREATE DATABASE {DB}"))?;
    let influx_url = influx.url();
    let mut session = Session {
        stop: stop.clone(),
        agent: None,
        threads: Vec::new(),
        pair: None,
        influx: Arc::new(Mutex::new(influx)),
        stopped: None,
    };
    let pair = Pair::create(prefix)?;
    session
        .threads
        .extend(pair.start(&stop, &counts.connections)?);
    session.pair = Some(pair);
    {
        let (prefix, stop, churn) = (format!("{prefix}c"), stop.clone(), counts.churn.clone());
        session
            .threads
            .push(std::thread::spawn(move || churn::run(prefix, stop, churn)));
    }
    let metrics_addr = format!("127.0.0.1:{}", http::free_port()?);
    let log_path = dir.join("agent.log");
    let args = [
        "--interval",
        "100ms",
        "--netns",
        "all",
        "--prometheus-listen",
        &metrics_addr,
        "--influx-url",
        &influx_url,
        "--influx-db",
        DB,
        "--stdout",
    ];
    println!("soak: {} {}", agent_path.display(), args.join(" "));
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(agent_path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", agent_path.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    session.agent = Some(child);
    if let Some(stdout) = stdout {
        let counts = counts.clone();
        session
            .threads
            .push(std::thread::spawn(move || drain(stdout, &counts)));
    }
    let t0 = wait_ready(&mut session, &metrics_addr, &log_path)?;
    let sighup = figures::handles_signal(pid, libc::SIGHUP);
    if sighup {
        println!(
            "soak: SIGHUP: the agent handles it; sent every {SIGNAL_EVERY:?}, between the SIGUSR1s"
        );
    } else {
        println!(
            "soak: SIGHUP: skipped, the agent neither catches nor ignores it (it would die by \
             the default action)"
        );
    }
    let mut log = LogCounter::default();
    session.threads.push(scraper(&stop, &metrics_addr, &counts));
    session
        .threads
        .push(influx_cycler(&stop, &session.influx, t0, &counts));

    println!("{}", figures::TABLE_HEADER);
    let mut samples: Vec<Sample> = Vec::new();
    let (mut usr1, mut hup) = (0u32, 0u32);
    let mut next_usr1 = t0 + Duration::from_secs(5);
    let mut next_hup = t0 + Duration::from_secs(15);
    let mut next_sample = t0 + WARM_UP;
    // Other software may create namespaces too: the peak shows it.
    let mut namespaces_peak = 0;
    let mut next_count = t0;
    let end = t0 + Duration::from_secs(minutes * 60);
    let outcome = loop {
        if interrupted() {
            break End::Interrupted;
        }
        if let Some(agent) = session.agent.as_mut() {
            if let Ok(Some(status)) = agent.try_wait() {
                session.agent = None;
                break End::AgentDied(status);
            }
        }
        let now = Instant::now();
        if now >= next_usr1 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
            usr1 += 1;
            next_usr1 += SIGNAL_EVERY;
        }
        if sighup && now >= next_hup {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
            hup += 1;
            next_hup += SIGNAL_EVERY;
        }
        if now >= next_count {
            namespaces_peak = namespaces_peak.max(figures::count_namespaces());
            next_count += NAMESPACES_EVERY;
        }
        if now >= next_sample {
            log.update(&log_path);
            if let Some(sample) = take_sample(pid, now - t0, &log, &counts) {
                if samples.is_empty() {
                    println!("soak: the agent's eBPF: {}", ebpf_status(&log_path));
                }
                namespaces_peak = namespaces_peak.max(sample.namespaces);
                println!("{}", figures::table_row(&sample));
                samples.push(sample);
            }
            next_sample += SAMPLE_EVERY;
            if now >= end {
                break End::Finished;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let influx_data = influx_measurements(&session.influx);
    session.shutdown();
    log.update(&log_path);

    let died = match outcome {
        End::AgentDied(status) => {
            println!("soak: the agent DIED ({status}); the end of its log:");
            print_tail(&log_path, 20);
            true
        }
        End::Interrupted => false,
        End::Finished => false,
    };
    let c = &counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak: load over the run: namespaces created {} named + {} anonymous ({} failures; \
         at most {} of each alive); SYNPROXY connections {} ok, {} failed; /metrics scrapes {} ok, \
         {} failed; InfluxDB killed {} times ({} restarts failed); SIGUSR1 sent {usr1}, SIGHUP {}; \
         agent stdout {} lines",
        load(&c.churn.named_created),
        load(&c.churn.anonymous_created),
        load(&c.churn.failures),
        churn::BOUND,
        load(&c.connections.ok),
        load(&c.connections.failed),
        load(&c.scrapes_ok),
        load(&c.scrapes_failed),
        load(&c.influx_kills),
        load(&c.influx_restarts_failed),
        if sighup {
            hup.to_string()
        } else {
            "skipped".into()
        },
        load(&c.stdout_lines),
    );
    println!("soak: InfluxDB database {DB}: {influx_data}");
    println!(
        "soak: WARN {} / ERROR {} lines in all; the most frequent:\n{}",
        log.warnings,
        log.errors,
        log.top_kinds(8)
    );
    let stop_failed = match session.stopped {
        Some((Some(status), took)) => {
            println!(
                "soak: agent stopped by SIGTERM in {} ms: {status}",
                took.as_millis()
            );
            false
        }
        Some((None, took)) => {
            println!("soak: the agent did NOT exit within {took:?} of SIGTERM (killed)");
            true
        }
        None => false,
    };
    let verdict = summary(&samples, namespaces_peak);
    match outcome {
        End::Interrupted => bail!("interrupted"),
        _ if died => bail!("the agent died during the soak"),
        _ if stop_failed => bail!("the agent did not stop on SIGTERM"),
        _ => verdict,
    }
}

/// Waits for the agent's first `/metrics` answer; the soak's clock starts then.
fn wait_ready(session: &mut Session, addr: &str, log: &Path) -> Result<Instant> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(Ok(Some(status))) = session.agent.as_mut().map(Child::try_wait) {
            print_tail(log, 20);
            bail!("the agent exited ({status}) before /metrics answered");
        }
        if matches!(http::request(addr, "GET", "/metrics", ""), Ok((200, _))) {
            return Ok(Instant::now());
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("the agent's /metrics did not answer on {addr} within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn take_sample(pid: u32, at: Duration, log: &LogCounter, c: &Counts) -> Option<Sample> {
    let (rss_kib, hwm_kib, fds, threads) = figures::read_process(pid)?;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Some(Sample {
        at,
        rss_kib,
        hwm_kib,
        fds,
        threads,
        warnings: log.warnings,
        errors: log.errors,
        namespaces: figures::count_namespaces(),
        series: load(&c.series),
        stdout_lines: load(&c.stdout_lines),
        scrapes_ok: load(&c.scrapes_ok),
        scrapes_failed: load(&c.scrapes_failed),
        connections_ok: load(&c.connections.ok),
        connections_failed: load(&c.connections.failed),
        influx_kills: load(&c.influx_kills),
    })
}

/// Start (the first sample, after the warm-up) against end; `Err` if growing.
fn summary(samples: &[Sample], namespaces_peak: u64) -> Result<()> {
    let (Some(start), Some(end)) = (samples.first(), samples.last()) else {
        bail!("no samples taken");
    };
    if samples.len() < 2 {
        bail!("only one sample taken: nothing to compare");
    }
    let mib = |kib: u64| format!("{:.2}", kib as f64 / 1024.0);
    println!(
        "soak: summary, start = after the warm-up ({} s), end = {} s",
        start.at.as_secs(),
        end.at.as_secs()
    );
    println!("                         start        end");
    for (name, a, b) in [
        ("RSS MiB", mib(start.rss_kib), mib(end.rss_kib)),
        ("peak RSS MiB", mib(start.hwm_kib), mib(end.hwm_kib)),
        ("open fds", start.fds.to_string(), end.fds.to_string()),
        (
            "threads",
            start.threads.to_string(),
            end.threads.to_string(),
        ),
        (
            "namespaces on host",
            start.namespaces.to_string(),
            end.namespaces.to_string(),
        ),
        (
            "/metrics series",
            start.series.to_string(),
            end.series.to_string(),
        ),
        (
            "WARN lines (total)",
            start.warnings.to_string(),
            end.warnings.to_string(),
        ),
        (
            "ERROR lines (total)",
            start.errors.to_string(),
            end.errors.to_string(),
        ),
    ] {
        println!("  {name:<20} {a:>10} {b:>10}");
    }
    let minutes = (end.at - start.at).as_secs_f64() / 60.0;
    if minutes > 0.0 {
        println!(
            "  warnings per minute in the measured period: {:.1}",
            (end.warnings + end.errors - start.warnings - start.errors) as f64 / minutes
        );
    }
    println!("  namespaces on host, peak: {namespaces_peak}");
    // The soak itself keeps its pair and up to twice the churn bound alive.
    if namespaces_peak > start.namespaces + churn::BOUND as u64 {
        println!(
            "  note: something else created namespaces during the run ({} at the start, {namespaces_peak} at the peak): \
             the figures include the agent's work on them",
            start.namespaces
        );
    }
    match figures::verdict(start, end) {
        Ok(()) => {
            println!("soak: verdict: flat");
            Ok(())
        }
        Err(grew) => {
            println!("soak: verdict: growing\n  {}", grew.join("\n  "));
            bail!("the agent's figures grew during the soak")
        }
    }
}

/// Counts the agent's stdout lines until it closes.
fn drain(mut stdout: impl Read, counts: &Counts) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        counts.stdout_lines.fetch_add(lines, Ordering::Relaxed);
    }
}

/// `GET /metrics` every second: a 200 with samples is a success.
fn scraper(stop: &Stop, addr: &str, counts: &Arc<Counts>) -> JoinHandle<()> {
    let (stop, addr, counts) = (stop.clone(), addr.to_string(), counts.clone());
    std::thread::spawn(move || {
        let mut next = Instant::now();
        while stop.sleep_until(next) {
            next += SCRAPE_EVERY;
            match http::request(&addr, "GET", "/metrics", "") {
                Ok((200, body)) => {
                    let samples = body
                        .lines()
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .count() as u64;
                    counts.series.store(samples, Ordering::Relaxed);
                    counts.scrapes_ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, _)) => {
                    if counts.scrapes_failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("soak: /metrics answered {status}");
                    }
                }
                Err(e) => {
                    if counts.scrapes_failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("soak: /metrics: {e:#}");
                    }
                }
            }
        }
    })
}

/// Kills InfluxDB 10 s into every 30 s and starts it again 10 s later.
fn influx_cycler(
    stop: &Stop,
    influx: &Arc<Mutex<Influxd>>,
    t0: Instant,
    counts: &Arc<Counts>,
) -> JoinHandle<()> {
    let (stop, influx, counts) = (stop.clone(), influx.clone(), counts.clone());
    std::thread::spawn(move || {
        let mut kill_at = t0 + Duration::from_secs(10);
        while stop.sleep_until(kill_at) {
            if let Ok(mut server) = influx.lock() {
                server.kill();
            }
            counts.influx_kills.fetch_add(1, Ordering::Relaxed);
            if !stop.sleep_until(kill_at + INFLUX_DOWN) {
                break;
            }
            if let Ok(mut server) = influx.lock() {
                if let Err(e) = server.spawn() {
                    counts
                        .influx_restarts_failed
                        .fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: restarting influxd: {e:#}");
                }
            }
            kill_at += INFLUX_CYCLE;
        }
    })
}

/// What the agent's writes left in InfluxDB (its measurements), or why not known.
fn influx_measurements(influx: &Mutex<Influxd>) -> String {
    let Ok(server) = influx.lock() else {
        return "unknown".into();
    };
    match server.execute(&format!("SHOW MEASUREMENTS ON {DB}")) {
        Ok(answer) => {
            // {"results":[{"series":[{..., "values":[["synproxy"],...]}]}]}
            let names: Vec<&str> = answer
                .split_once("\"values\":")
                .map(|(_, values)| values.split('"').skip(1).step_by(2).collect())
                .unwrap_or_default();
            if names.is_empty() {
                "NO measurements written".into()
            } else {
                format!("measurements written: {}", names.join(", "))
            }
        }
        Err(e) => format!("cannot query ({e:#})"),
    }
}

/// The agent's first log line about eBPF (loaded, or why not).
fn ebpf_status(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("eBPF"))
        .map(|l| {
            l.split_once(' ')
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "no log line about it".into())
}

fn print_tail(path: &Path, lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("  | {line}");
    }
}

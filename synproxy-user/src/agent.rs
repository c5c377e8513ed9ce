//! Drives the data flow on a schedule: read every selected namespace
//! (sources), turn readings into u64 totals (reconcile), emit samples (sinks).
//! One failing namespace is reported once and does not stop the others.

use crate::cli::{NetnsSelection, SignalMode};
use crate::reconcile::ebpf::{self as ebpf_reconcile, Reconciler, Status};
use crate::reconcile::wrap_tracker::{ResetReason, Update, WrapTracker};
use crate::sample::{now_ns, EbpfSample, ProbesSample, Sample};
use crate::sinks::stdout::{SinkError, StdoutSink};
use crate::sources::ebpf::EbpfSource;
use crate::sources::netns::{self, NetnsError, NetnsTarget};
use crate::sources::proc_file::{read_stat_file, ReadError, Reading, STAT_FILE};
use log::{debug, info, warn};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct SamplerConfig {
    /// One round only: failures are errors, not retried.
    pub once: bool,
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
    pub selection: NetnsSelection,
    /// The eBPF source when eBPF is in use (adds the `synproxy_ebpf` lines).
    pub ebpf: Option<EbpfSource>,
}

/// Per-series state kept between rounds.
#[derive(Default)]
struct Series {
    tracker: WrapTracker,
    /// The error last reported for this series, so it is logged once.
    failing: Option<String>,
    reconciler: Reconciler,
    /// `--netns all`: rounds since the namespace was last seen.
    missing_rounds: u32,
}

/// How long (in rounds) a vanished namespace's totals are kept for its return.
const VANISHED_ROUNDS_KEPT: u32 = 360;

/// One sampling round's outcome.
pub struct Round {
    pub samples: Vec<Sample>,
    /// Namespaces that could not be read this round (already logged).
    pub failures: Vec<String>,
    /// With eBPF: two lines (IPv4, IPv6) per sample, in sample order.
    pub ebpf: Vec<EbpfSample>,
    pub probes: Option<ProbesSample>,
}

/// A series read this round, waiting for its eBPF side.
struct Pending {
    label: String,
    netns: Option<String>,
    inode: Option<u32>,
    totals: crate::fields::Values<u64>,
    reset: bool,
    timestamp_ns: u64,
}

pub struct Sampler {
    config: SamplerConfig,
    series: HashMap<String, Series>,
    buf: Vec<u8>,
    /// Inode of the agent's own network namespace (eBPF only).
    own_inode: Option<u32>,
    pending: Vec<Pending>,
}

/// Series key of the agent's own namespace (never a valid netns name).
const OWN_SERIES: &str = "";

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let own_inode = config
            .ebpf
            .as_ref()
            .and_then(|_| netns::netns_inode(&config.proc_root.join("self/ns/net")));
        Self {
            config,
            series: HashMap::new(),
            buf: Vec::new(),
            own_inode,
            pending: Vec::new(),
        }
    }

    /// With eBPF: one silent round, so that the first emitted round already
    /// reconciles against a baseline taken now.
    pub fn prime(&mut self) {
        if self.config.ebpf.is_some() {
            let _ = self.sample();
        }
    }

    /// Stops the eBPF probes (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(mut ebpf) = self.config.ebpf.take() {
            ebpf.flush_log();
            ebpf.detach();
        }
    }

    pub fn sample(&mut self) -> Round {
        let mut round = Round {
            samples: Vec::new(),
            failures: Vec::new(),
            ebpf: Vec::new(),
            probes: None,
        };
        // Attach (or re-attach after a module reload) before reading /proc, so a
        // new baseline is taken after the probes are in place.
        if let Some(ebpf) = self.config.ebpf.as_mut() {
            ebpf.poll();
        }
        match self.config.selection.clone() {
            NetnsSelection::Own => {
                let path = self.config.proc_root.join(STAT_FILE);
                let result = read_stat_file(&path, &mut self.buf);
                let timestamp_ns = now_ns();
                self.record(
                    OWN_SERIES,
                    self.own_inode,
                    result.map_err(Failure::Read),
                    timestamp_ns,
                    &mut round,
                );
            }
            NetnsSelection::Named(names) => {
                let targets = netns::named_targets(&names, &self.config.netns_dir);
                self.read_namespaces(&targets, &mut round);
            }
            NetnsSelection::All => {
                let targets = netns::discover_all(&self.config.proc_root, &self.config.netns_dir);
                self.read_namespaces(&targets, &mut round);
                // A namespace that is gone may come back under its name (a new
                // one): keep its totals a while, marked gone, so that is a reset
                // rather than a drop; then forget it, so state stays bounded.
                self.series.retain(|label, series| {
                    if targets.iter().any(|t| &t.label == label) {
                        return true;
                    }
                    series.missing_rounds += 1;
                    if series.missing_rounds == 1 {
                        info!("netns {label}: gone, no longer reported");
                        series.tracker.counters_gone();
                    }
                    series.missing_rounds <= VANISHED_ROUNDS_KEPT
                });
            }
        }
        self.reconcile_ebpf(&mut round);
        round
    }

    /// Joins this round's /proc totals with the eBPF counts of the same
    /// namespace (by inode) and adds the `synproxy_ebpf` lines.
    fn reconcile_ebpf(&mut self, round: &mut Round) {
        let Some(ebpf) = self.config.ebpf.as_mut() else {
            return;
        };
        let reading = ebpf.read();
        let res_s = ebpf.rate_resolution().as_secs_f64();
        let losses = reading.as_ref().map_or(0, |r| r.losses);
        let timestamp_ns = now_ns();
        for p in self.pending.drain(..) {
            let Some(series) = self.series.get_mut(&p.label) else {
                continue;
            };
            let counts = match (&reading, p.inode) {
                (Some(r), Some(inode)) => Some((
                    r.generation,
                    r.counts.get(&inode).copied().unwrap_or_default(),
                )),
                _ => None,
            };
            let out = series.reconciler.update(ebpf_reconcile::Input {
                proc: ebpf_reconcile::proc_counts(&p.totals),
                proc_reset: p.reset,
                ebpf: counts,
                losses,
            });
            let peaks = match (&reading, p.inode) {
                (Some(r), Some(inode)) if out.status != Status::ProcOnly => {
                    r.peaks.get(&inode).copied().unwrap_or_default()
                }
                _ => Default::default(),
            };
            for (f, family) in ["ipv4", "ipv6"].into_iter().enumerate() {
                round.ebpf.push(EbpfSample {
                    netns: p.netns.clone(),
                    family,
                    events: out.events[f],
                    peak_rates: std::array::from_fn(|c| peaks[f][c] as f64 / res_s * out.scale[c]),
                    probe_misses: losses,
                    status: out.status,
                    timestamp_ns: p.timestamp_ns,
                });
            }
        }
        round.probes = Some(match reading {
            Some(r) => ProbesSample {
                attached: true,
                probes: r.probes,
                diag: r.diag,
                timestamp_ns,
            },
            None => ProbesSample {
                attached: false,
                probes: Vec::new(),
                diag: Default::default(),
                timestamp_ns,
            },
        });
    }

    fn read_namespaces(&mut self, targets: &[NetnsTarget], round: &mut Round) {
        let results = netns::read_in_namespaces(targets, &self.config.proc_root);
        let timestamp_ns = now_ns();
        for (target, result) in targets.iter().zip(results) {
            match result {
                Err(e) if target.transient && e.is_vanished() => {
                    debug!("{e} (process exited during the scan)");
                }
                result => {
                    let inode = self
                        .config
                        .ebpf
                        .as_ref()
                        .and_then(|_| netns::netns_inode(&target.handle));
                    self.record(
                        &target.label,
                        inode,
                        result.map_err(Failure::Netns),
                        timestamp_ns,
                        round,
                    )
                }
            }
        }
    }

    fn record(
        &mut self,
        label: &str,
        inode: Option<u32>,
        result: Result<Reading, Failure>,
        timestamp_ns: u64,
        round: &mut Round,
    ) {
        let name = if label == OWN_SERIES {
            self.config.proc_root.join(STAT_FILE).display().to_string()
        } else {
            format!("netns {label}")
        };
        let series = self.series.entry(label.to_string()).or_default();
        match result {
            Ok(reading) => {
                if series.failing.take().is_some() {
                    info!("{name}: synproxy counters readable again");
                }
                series.missing_rounds = 0;
                let (totals, update) = series.tracker.update(reading.identity, &reading.stat);
                match update {
                    Update::Reset(
                        reason @ (ResetReason::NewCounters
                        | ResetReason::FileWasGone
                        | ResetReason::CountersWentBack),
                    ) => warn!(
                        "{name}: synproxy counters were recreated (module reloaded or namespace replaced; {}); totals continue from a new baseline",
                        match reason {
                            ResetReason::FileWasGone => "the file was gone",
                            ResetReason::NewCounters => "new proc entry",
                            _ => "counters went back",
                        }
                    ),
                    Update::Reset(ResetReason::CpuCountChanged { before, after }) => warn!(
                        "{name}: CPU rows changed from {before} to {after}; totals continue from a new baseline"
                    ),
                    Update::Continued { wrapped_cpus } if wrapped_cpus > 0 => {
                        debug!("{name}: 32-bit counter wrap on {wrapped_cpus} CPU(s) absorbed")
                    }
                    _ => {}
                }
                let netns = (label != OWN_SERIES).then(|| label.to_string());
                if self.config.ebpf.is_some() {
                    self.pending.push(Pending {
                        label: label.to_string(),
                        netns: netns.clone(),
                        inode,
                        totals,
                        reset: matches!(update, Update::Reset(_)),
                        timestamp_ns,
                    });
                }
                round.samples.push(Sample {
                    netns,
                    totals,
                    timestamp_ns,
                });
            }
            Err(failure) => {
                if failure.means_counters_gone() {
                    series.tracker.counters_gone();
                }
                let message = failure.to_string();
                if self.config.once {
                    log::error!("{message}");
                } else if series.failing.as_deref() != Some(message.as_str()) {
                    warn!("{message}; retrying every interval");
                    series.failing = Some(message.clone());
                }
                round.failures.push(message);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Read(ReadError),
    #[error(transparent)]
    Netns(NetnsError),
}

impl Failure {
    /// The stat file or its namespace does not exist: the kernel destroyed those
    /// counters, so the next reading is a new set.
    fn means_counters_gone(&self) -> bool {
        matches!(
            self,
            Failure::Read(ReadError::Missing { .. })
                | Failure::Netns(NetnsError::NotFound { .. })
                | Failure::Netns(NetnsError::Read {
                    source: ReadError::Missing { .. },
                    ..
                })
        )
    }
}

/// How the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Signal, stdin EOF or closed stdout: a clean stop.
    Clean,
    /// `--once` could not read every selected namespace.
    SampleFailed,
    /// stdout failed for another reason.
    OutputFailed,
}

pub struct Schedule {
    pub once: bool,
    pub interval: Duration,
    pub signal: SignalMode,
}

pub async fn run(mut sampler: Sampler, mut sink: StdoutSink, schedule: Schedule) -> Exit {
    let exit = run_loop(&mut sampler, &mut sink, schedule).await;
    sampler.shutdown();
    exit
}

async fn run_loop(sampler: &mut Sampler, sink: &mut StdoutSink, schedule: Schedule) -> Exit {
    if schedule.once {
        let round = sampler.sample();
        if let Err(exit) = emit(sink, &round) {
            return exit;
        }
        return if round.failures.is_empty() {
            Exit::Clean
        } else {
            Exit::SampleFailed
        };
    }

    sampler.prime();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    match schedule.signal {
        SignalMode::Stdin => {
            let mut lines = stdin_lines();
            loop {
                tokio::select! {
                    line = lines.recv() => match line {
                        Some(()) => {
                            let round = sampler.sample();
                            if let Err(exit) = emit(sink, &round) {
                                return exit;
                            }
                        }
                        None => {
                            info!("stdin closed, exiting");
                            return Exit::Clean;
                        }
                    },
                    signal = &mut shutdown => {
                        info!("{signal}, exiting");
                        return Exit::Clean;
                    }
                }
            }
        }
        SignalMode::None => {
            let mut ticker = tokio::time::interval(schedule.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let round = sampler.sample();
                        if let Err(exit) = emit(sink, &round) {
                            return exit;
                        }
                    }
                    signal = &mut shutdown => {
                        info!("{signal}, exiting");
                        return Exit::Clean;
                    }
                }
            }
        }
    }
}

fn emit(sink: &mut StdoutSink, round: &Round) -> Result<(), Exit> {
    if round.samples.is_empty() {
        return Ok(());
    }
    match sink.write_round(&round.samples, &round.ebpf, round.probes.as_ref()) {
        Ok(()) => Ok(()),
        Err(SinkError::Closed) => {
            info!("stdout closed, exiting");
            Err(Exit::Clean)
        }
        Err(e) => {
            log::error!("{e}");
            Err(Exit::OutputFailed)
        }
    }
}

/// One message per line on stdin; the channel closes on EOF or a read error.
/// A plain thread, because a blocked stdin read must not hold up shutdown.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut line = String::new();
            let stdin = std::io::stdin();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if tx.blocking_send(()).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("stdin: {e}");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the stdin reader: {e}");
    }
    rx
}

/// Resolves with the name of the first SIGTERM/SIGINT received.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        (Err(e), _) | (_, Err(e)) => {
            warn!("cannot install signal handlers ({e}); relying on default signal handling");
            std::future::pending().await
        }
    }
}

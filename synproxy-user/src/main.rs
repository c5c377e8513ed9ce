//! `synproxy-agent`: see README.md. Parses flags, starts the outputs (sinks)
//! and the sampler (sources -> reconcile -> sample), hands both to the
//! runtime, and maps how the run ended to an exit code.

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use synproxy_user::analysis::attack::subject::Params as AttackParams;
use synproxy_user::analysis::verdict::Params as VerdictParams;
use synproxy_user::cli::{Cli, Command, NetnsSelection, SignalMode, TopArgs};
use synproxy_user::logging;
use synproxy_user::privileges;
use synproxy_user::ranking::TopConfig;
use synproxy_user::runtime::{self, Blocking, Exit, Schedule};
use synproxy_user::sampler::{AttackConfig, Sampler, SamplerConfig, StackSources};
use synproxy_user::sinks::{gate, OutputConfig, Sinks};
use synproxy_user::sources::ebpf::{EbpfSource, ProbeType, Stop};
use synproxy_user::top;

/// Exit code for a usage or configuration error (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Signals first: SIGTERM/SIGINT/SIGQUIT at any moment of start-up end the agent
    // cleanly (exit 0, nothing left in the kernel), never by the default action.
    runtime::block_shutdown_signals(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            runtime::block_shutdown_signals(false);
            eprintln!("synproxy-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = {
        let _guard = rt.enter();
        runtime::Signals::install()
    };
    runtime::block_shutdown_signals(false);

    let mut cli = Cli::parse();
    // Empty: no endpoint (how /etc/default/synproxy-agent turns off the unit's).
    cli.prometheus_listen = cli.prometheus_listen.take().filter(|a| !a.is_empty());
    let log_format = logging::resolve(cli.log_format);
    if let Some(Command::Top(args)) = cli.command.take() {
        return top_main(&rt, signals, args, log_format);
    }
    logging::init(log_format, cli.log_level.filter());
    let selection = match cli.validate() {
        Ok(selection) => selection,
        Err(message) => {
            log::error!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Outputs next, before anything slow: a port in use is a start-up error,
    // and the metrics endpoint answers while eBPF loads.
    let outputs = match OutputConfig::from_cli(&cli) {
        Ok(outputs) => outputs,
        Err(message) => {
            log::error!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The network outputs read and send nothing until the capability drop.
    let (opener, gate) = gate::gate();
    let sinks = {
        let _guard = rt.enter();
        Sinks::from_config(outputs, &gate)
    };
    let sinks = match sinks {
        Ok(sinks) => sinks,
        Err(message) => {
            log::error!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let exit = rt.block_on(start(Run::from(&cli), selection, signals, sinks, opener));
    // Work abandoned at a signal (nothing of it outlives the process) is not
    // waited for.
    rt.shutdown_background();
    exit_code(&exit)
}

/// How a run ended: the runtime's verdict, or refused at start-up.
enum Ended {
    Run(Exit),
    /// The capability drop failed (logged); nothing was sampled.
    DropFailed,
}

fn exit_code(ended: &Ended) -> ExitCode {
    match ended {
        Ended::Run(Exit::Clean) => ExitCode::SUCCESS,
        Ended::Run(Exit::SampleFailed | Exit::OutputFailed) | Ended::DropFailed => {
            ExitCode::FAILURE
        }
    }
}

/// `synproxy-agent top`: the same start-up and rounds, with the terminal
/// view as the only output. Logs go to memory while the view is up; the
/// warnings and errors are printed once the terminal is restored.
fn top_main(
    rt: &tokio::runtime::Runtime,
    mut signals: runtime::Signals,
    args: TopArgs,
    log_format: logging::LogFormat,
) -> ExitCode {
    // The terminal hung up: the view has nothing left to draw on.
    signals.end_on_hangup();
    let selection = match args.validate() {
        Ok(selection) => selection,
        Err(message) => {
            eprintln!("synproxy-agent top: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(message) = top::terminal::check_tty() {
        eprintln!("synproxy-agent top: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let log = logging::init_ring(log::LevelFilter::Info);
    let mut sinks = Sinks::default();
    match top::TopSink::start(args.interval, std::sync::Arc::clone(&log), sinks.notifier()) {
        Ok(sink) => sinks.add(Box::new(sink)),
        Err(message) => {
            eprintln!("synproxy-agent top: {message}");
            return ExitCode::FAILURE;
        }
    }
    let top = args.top_config();
    let run = Run {
        once: false,
        interval: args.interval,
        signal: SignalMode::None,
        proc_root: args.proc_root,
        netns_dir: args.netns_dir,
        no_ebpf: args.no_ebpf,
        probes: args.probes,
        rate_resolution: args.rate_resolution,
        top,
        allow_failed_drop: args.allow_failed_capability_drop,
        // The Defense panel judges all three layers.
        stack: StackSources {
            nstat: true,
            conntrack: true,
        },
        verdict: Some(VerdictParams {
            warmup_secs: args.verdict_warmup.as_secs_f64(),
            ..VerdictParams::default()
        }),
        // The Attacks panel: the agent's rules, nothing kept across runs.
        attacks: Some(AttackConfig {
            params: AttackParams {
                warmup_secs: args.verdict_warmup.as_secs_f64(),
                ..AttackParams::default()
            },
            state_dir: None,
        }),
    };
    // No network output in `top`: nothing waits at the gate.
    let (opener, _) = gate::gate();
    let exit = rt.block_on(start(run, selection, signals, sinks, opener));
    // Whatever ended the run, the terminal is the user's again (idempotent).
    top::terminal::restore();
    for line in log.problems(log_format) {
        eprint!("{line}");
    }
    exit_code(&exit)
}

/// What the sampler and the schedule need, from the agent's flags or `top`'s.
struct Run {
    once: bool,
    interval: std::time::Duration,
    signal: SignalMode,
    proc_root: std::path::PathBuf,
    netns_dir: std::path::PathBuf,
    no_ebpf: bool,
    probes: ProbeType,
    rate_resolution: std::time::Duration,
    top: TopConfig,
    /// `--allow-failed-capability-drop`.
    allow_failed_drop: bool,
    /// `--no-nstat`, `--no-conntrack` (off in `top`).
    stack: StackSources,
    /// `--no-verdict`, `--verdict-warmup` (off in `top`).
    verdict: Option<VerdictParams>,
    /// `--no-attacks`, `--attack-*`, `--state-dir`.
    attacks: Option<AttackConfig>,
}

impl From<&Cli> for Run {
    fn from(cli: &Cli) -> Self {
        Self {
            once: cli.once,
            interval: cli.interval,
            signal: cli.signal,
            proc_root: cli.proc_root.clone(),
            netns_dir: cli.netns_dir.clone(),
            no_ebpf: cli.no_ebpf,
            probes: cli.probes,
            rate_resolution: cli.rate_resolution,
            top: cli.top_config(),
            allow_failed_drop: cli.allow_failed_capability_drop,
            stack: StackSources {
                nstat: !cli.no_nstat,
                conntrack: !cli.no_conntrack,
            },
            verdict: (!cli.no_verdict).then(|| VerdictParams {
                warmup_secs: cli.verdict_warmup.as_secs_f64(),
                ..VerdictParams::default()
            }),
            attacks: (!cli.attacks.no_attacks).then(|| AttackConfig {
                params: cli.attacks.params(),
                state_dir: cli.attacks.state_dir(|k| std::env::var(k).ok()),
            }),
        }
    }
}

async fn start(
    run: Run,
    selection: NetnsSelection,
    mut signals: runtime::Signals,
    sinks: Sinks,
    opener: gate::GateOpener,
) -> Ended {
    let stop = Arc::new(Stop::default());
    // eBPF: load, verify and attach; anything that prevents it is one warning,
    // then /proc only. --once has no interval to count in: it only checks.
    let mut ebpf_off = None;
    let ebpf = if run.no_ebpf {
        ebpf_off = Some("--no-ebpf".to_string());
        None
    } else {
        let (resolution, attach, flag) = (run.rate_resolution, !run.once, Arc::clone(&stop));
        let probes = run.probes;
        let source_entries = run.top.enabled().then_some(run.top.map_entries);
        let port_entries = run.top.ports_enabled().then_some(run.top.port_map_entries);
        let opened = match runtime::blocking_or_signal(
            move || {
                EbpfSource::open(
                    resolution,
                    attach,
                    &flag,
                    probes,
                    source_entries,
                    port_entries,
                )
            },
            &mut signals,
            &stop,
        )
        .await
        {
            Blocking::Done(opened) => Some(opened),
            Blocking::Stopped(opened, signal) => {
                log::info!("{signal} during start-up, exiting");
                // Dropping the source detaches whatever was attached.
                drop(opened);
                return Ended::Run(Exit::Clean);
            }
            Blocking::Abandoned(signal) => {
                log::info!("{signal} during start-up, exiting");
                return Ended::Run(Exit::Clean);
            }
            Blocking::Died => None,
        };
        match opened {
            Some(Ok(source)) if run.once => {
                log::debug!(
                    "eBPF usable; --once reports /proc only (eBPF counts need an interval)"
                );
                drop(source);
                ebpf_off = Some("--once (eBPF counts need an interval)".to_string());
                None
            }
            Some(Ok(source)) => Some(source),
            Some(Err(reason)) => {
                log::warn!("eBPF disabled: {reason}; reporting /proc only");
                ebpf_off = Some(reason.to_string());
                None
            }
            None => {
                log::warn!("eBPF disabled: the loader stopped unexpectedly; reporting /proc only");
                ebpf_off = Some("the loader stopped unexpectedly".to_string());
                None
            }
        }
    };

    // Start-up is over: keep only the capabilities the features still need,
    // or stop (dropping the source detaches the probes).
    let dropped = privileges::restrict_and_log(
        privileges::Features {
            ebpf: ebpf.as_ref().map(EbpfSource::capability_need),
            netns: match &selection {
                NetnsSelection::Own => privileges::NetnsNeed::Own,
                NetnsSelection::Named(_) => privileges::NetnsNeed::Named,
                NetnsSelection::All(_) => privileges::NetnsNeed::All,
            },
        },
        if run.once {
            log::Level::Debug
        } else {
            log::Level::Info
        },
        run.allow_failed_drop,
    );
    if dropped.is_err() {
        drop(ebpf);
        return Ended::DropFailed;
    }
    opener.open();
    log::debug!("capabilities dropped: network outputs may read requests and send");
    if !matches!(selection, NetnsSelection::Own) {
        runtime::raise_fd_limit();
    }
    let sampler = Sampler::new(SamplerConfig {
        once: run.once,
        proc_root: run.proc_root.clone(),
        netns_dir: run.netns_dir.clone(),
        selection,
        ebpf,
        ebpf_off: ebpf_off.map(Arc::from),
        stop: Arc::clone(&stop),
        top: run.top,
        stack: run.stack,
        verdict: run.verdict,
        attacks: run.attacks,
    });
    let schedule = Schedule {
        once: run.once,
        interval: run.interval,
        signal: run.signal,
    };
    Ended::Run(runtime::run(sampler, sinks, schedule, signals, stop).await)
}

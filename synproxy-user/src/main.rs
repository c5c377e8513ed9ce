//! `synproxy-agent`: see README.md. Parses flags, starts the outputs (sinks)
//! and the sampler (sources -> reconcile -> sample), hands both to the
//! runtime, and maps how the run ended to an exit code.

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use synproxy_user::cli::{Cli, NetnsSelection};
use synproxy_user::logging;
use synproxy_user::privileges;
use synproxy_user::runtime::{self, Blocking, Exit, Schedule};
use synproxy_user::sampler::{Sampler, SamplerConfig};
use synproxy_user::sinks::{OutputConfig, Sinks};
use synproxy_user::sources::ebpf::{EbpfSource, Stop};

/// Exit code for a usage or configuration error (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Signals first: SIGTERM/SIGINT at any moment of start-up end the agent
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

    let cli = Cli::parse();
    logging::init(cli.log_format, cli.log_level.filter());
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
    let sinks = {
        let _guard = rt.enter();
        Sinks::from_config(outputs)
    };
    let sinks = match sinks {
        Ok(sinks) => sinks,
        Err(message) => {
            log::error!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let exit = rt.block_on(start(cli, selection, signals, sinks));
    // Work abandoned at a signal (nothing of it outlives the process) is not
    // waited for.
    rt.shutdown_background();
    match exit {
        Exit::Clean => ExitCode::SUCCESS,
        Exit::SampleFailed | Exit::OutputFailed => ExitCode::FAILURE,
    }
}

async fn start(
    cli: Cli,
    selection: NetnsSelection,
    mut signals: runtime::Signals,
    sinks: Sinks,
) -> Exit {
    let stop = Arc::new(Stop::default());
    // eBPF: load, verify and attach; anything that prevents it is one warning,
    // then /proc only. --once has no interval to count in: it only checks.
    let ebpf = if cli.no_ebpf {
        None
    } else {
        let (resolution, attach, flag) = (cli.rate_resolution, !cli.once, Arc::clone(&stop));
        let probes = cli.probes;
        let opened = match runtime::blocking_or_signal(
            move || EbpfSource::open(resolution, attach, &flag, probes),
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
                return Exit::Clean;
            }
            Blocking::Abandoned(signal) => {
                log::info!("{signal} during start-up, exiting");
                return Exit::Clean;
            }
            Blocking::Died => None,
        };
        match opened {
            Some(Ok(source)) if cli.once => {
                log::debug!(
                    "eBPF usable; --once reports /proc only (eBPF counts need an interval)"
                );
                drop(source);
                None
            }
            Some(Ok(source)) => Some(source),
            Some(Err(reason)) => {
                log::warn!("eBPF disabled: {reason}; reporting /proc only");
                None
            }
            None => {
                log::warn!("eBPF disabled: the loader stopped unexpectedly; reporting /proc only");
                None
            }
        }
    };

    // Start-up is over: keep only the capabilities the features still need.
    privileges::restrict_and_log(
        privileges::Features {
            ebpf: ebpf.as_ref().map(EbpfSource::capability_need),
            netns: match &selection {
                NetnsSelection::Own => privileges::NetnsNeed::Own,
                NetnsSelection::Named(_) => privileges::NetnsNeed::Named,
                NetnsSelection::All => privileges::NetnsNeed::All,
            },
        },
        if cli.once {
            log::Level::Debug
        } else {
            log::Level::Info
        },
    );
    if !matches!(selection, NetnsSelection::Own) {
        runtime::raise_fd_limit();
    }
    let sampler = Sampler::new(SamplerConfig {
        once: cli.once,
        proc_root: cli.proc_root.clone(),
        netns_dir: cli.netns_dir.clone(),
        selection,
        ebpf,
        stop: Arc::clone(&stop),
    });
    let schedule = Schedule {
        once: cli.once,
        interval: cli.interval,
        signal: cli.signal,
    };
    runtime::run(sampler, sinks, schedule, signals, stop).await
}

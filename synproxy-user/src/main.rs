//! `synproxy-agent`: see README.md. Parses flags, wires sources -> reconcile ->
//! sinks, and maps how the run ended to an exit code.

use clap::Parser;
use std::process::ExitCode;
use synproxy_user::agent::{self, Exit, SamplerConfig, Schedule};
use synproxy_user::cli::Cli;
use synproxy_user::logging;
use synproxy_user::sinks::line_protocol::{IntegerType, LineEncoder};
use synproxy_user::sinks::stdout::StdoutSink;
use synproxy_user::sources::ebpf::EbpfSource;

/// Exit code for a usage or configuration error (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.log_level.filter());
    let selection = match cli.validate() {
        Ok(selection) => selection,
        Err(message) => {
            log::error!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // eBPF: load, verify and attach; anything that prevents it is one warning,
    // then /proc only. --once has no interval to count in: it only checks.
    let ebpf = if cli.no_ebpf {
        None
    } else {
        match EbpfSource::open(cli.rate_resolution, !cli.once) {
            Ok(source) if cli.once => {
                log::debug!(
                    "eBPF usable; --once reports /proc only (eBPF counts need an interval)"
                );
                drop(source);
                None
            }
            Ok(source) => Some(source),
            Err(reason) => {
                log::warn!("eBPF disabled: {reason}; reporting /proc only");
                None
            }
        }
    };

    let mut tags = Vec::new();
    if !cli.no_host_tag {
        match cli.hostname.clone().or_else(hostname) {
            Some(host) => tags.push(("host".to_string(), host)),
            None => {
                log::warn!("cannot read the hostname; lines carry no host tag (set --hostname)")
            }
        }
    }
    for (key, value) in &cli.tags {
        tags.retain(|(k, _)| k != key);
        tags.push((key.clone(), value.clone()));
    }
    let integers = if cli.uint {
        IntegerType::Unsigned
    } else {
        IntegerType::Signed
    };
    let sink = StdoutSink::new(LineEncoder::new(&tags, integers));
    let sampler = agent::Sampler::new(SamplerConfig {
        once: cli.once,
        proc_root: cli.proc_root.clone(),
        netns_dir: cli.netns_dir.clone(),
        selection,
        ebpf,
    });
    let schedule = Schedule {
        once: cli.once,
        interval: cli.interval,
        signal: cli.signal,
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(sampler, sink, schedule)) {
        Exit::Clean => ExitCode::SUCCESS,
        Exit::SampleFailed | Exit::OutputFailed => ExitCode::FAILURE,
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    (!name.is_empty()).then_some(name)
}

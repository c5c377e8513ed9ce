//! Where snapshots go. Each output is a [`Sink`]: every round the runtime
//! hands it that round's [`Snapshot`] (one `Arc`, shared by all sinks), and
//! the sink must return at once: one that does I/O hands the work to its own
//! thread or task, so a slow reader, scraper or server never holds up
//! sampling. Adding an output means a module here, its flags in the CLI, and
//! a line each in [`OutputConfig::from_cli`] and [`Sinks::from_config`].
//!
//! - [`stdout`]: InfluxDB line protocol ([`line_protocol`]) through a writer
//!   thread; the only output unless a network output is configured, and then
//!   only with `--stdout`.
//! - [`prometheus`]: a `/metrics` endpoint that renders the latest snapshot
//!   on each scrape.
//! - [`influx`]: the same lines as stdout, written to an InfluxDB server
//!   (1.x `/write` or 2.x `/api/v2/write`) by its own thread, with a bounded
//!   buffer and retries.
//!
//! - [`hook`]: `--on-attack CMD`, run at each attack's start and end.
//!
//! The network outputs wait at a [`gate::Gate`] until the capability drop.

pub mod gate;
#[cfg(test)]
mod golden_tests;
pub mod hook;
pub mod influx;
pub mod line_protocol;
pub mod prometheus;
pub mod stdout;

use crate::analysis::attack::AttackEvent;
use crate::cli::Cli;
use crate::sample::{AgentHealth, Snapshot};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Why a sink stopped working in a way that ends the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its reader went away (stdout closed): a clean stop. The text says what.
    Closed(String),
    /// It failed: an error, logged as is.
    Failed(String),
}

/// One output.
pub trait Sink: Send {
    /// Takes one round's snapshot; returns at once. `Err`: the sink is done
    /// and the agent should stop.
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended>;
    /// At exit: finishes queued work, until `deadline` at the latest.
    fn finish(&mut self, deadline: Instant) -> Result<(), Ended>;
    /// Adds the sink's own health to the round's agent health before the
    /// snapshot is shared, so that another output can show it (Prometheus
    /// shows the InfluxDB writer's backlog). Most sinks have nothing to add.
    fn report_health(&self, _health: &mut AgentHealth) {}
    /// An attack started or ended: called between rounds as soon as the
    /// detector knows, returns at once. While an attack lasts, each round's
    /// snapshot carries its `ongoing` document ([`Snapshot::attacks`]).
    fn attack(&mut self, _event: &Arc<AttackEvent>) -> Result<(), Ended> {
        Ok(())
    }
}

/// Lets a sink's thread or task report that it has ended, so the runtime
/// stops without waiting for the next round.
#[derive(Clone, Debug)]
pub struct EndNotifier(UnboundedSender<Ended>);

impl EndNotifier {
    pub fn ended(&self, why: Ended) {
        let _ = self.0.send(why);
    }
}

/// Static configuration of the outputs, from the command line.
#[derive(Debug)]
pub struct OutputConfig {
    /// Line protocol on stdout.
    pub stdout: Option<line_protocol::LineEncoder>,
    /// The bound `/metrics` listener.
    pub prometheus: Option<prometheus::Listener>,
    /// Where and how to write to InfluxDB, with the encoder of its lines.
    pub influx: Option<(influx::InfluxConfig, line_protocol::LineEncoder)>,
    /// The `--on-attack` command, checked to be an executable file.
    pub hook: Option<hook::HookConfig>,
}

impl OutputConfig {
    /// Which outputs, from the flags: stdout (line protocol) unless a
    /// network output is configured without `--stdout`; the metrics listener,
    /// bound now so that a bad address is a start-up error (one line naming
    /// the flag).
    pub fn from_cli(cli: &Cli) -> Result<Self, String> {
        let prometheus = match &cli.prometheus_listen {
            Some(addr) => {
                let listener =
                    prometheus::Listener::bind(addr)?.with_top_series(cli.prometheus_top_sources);
                Some(match &cli.web_config_file {
                    Some(path) => listener.with_web_config(path)?,
                    None => listener,
                })
            }
            None => None,
        };
        // Credentials come from the environment (or a file), never argv.
        let influx = influx::InfluxConfig::from_cli(cli, |name| std::env::var(name).ok())?;
        let wants_lines = cli.stdout_enabled() || influx.is_some();
        // One encoder (tags, integer type) for every line protocol output:
        // InfluxDB receives exactly the lines stdout prints.
        let encoder = wants_lines.then(|| {
            let integers = if cli.uint {
                line_protocol::IntegerType::Unsigned
            } else {
                line_protocol::IntegerType::Signed
            };
            line_protocol::LineEncoder::new(&line_tags(cli), integers)
        });
        let stdout = encoder.clone().filter(|_| cli.stdout_enabled());
        let influx = influx.zip(encoder);
        let hook = hook::HookConfig::from_cli(cli)?;
        Ok(Self {
            stdout,
            prometheus,
            influx,
            hook,
        })
    }
}

/// `host` and `--tag` tags of every line.
fn line_tags(cli: &Cli) -> Vec<(String, String)> {
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
    tags
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

/// Every configured output.
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    ended_tx: UnboundedSender<Ended>,
    ended_rx: Option<UnboundedReceiver<Ended>>,
}

/// Where sinks report from their own threads or tasks that they ended
/// ([`Sinks::take_ends`]).
pub struct Ends(Option<UnboundedReceiver<Ended>>);

impl Ends {
    /// Resolves when a sink reports that it ended.
    pub async fn next(&mut self) -> Ended {
        match self.0.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(why) => why,
                // Cannot happen (the sinks hold a sender); never resolve if it did.
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Default for Sinks {
    fn default() -> Self {
        let (ended_tx, ended_rx) = unbounded_channel();
        Self {
            sinks: Vec::new(),
            ended_tx,
            ended_rx: Some(ended_rx),
        }
    }
}

impl Sinks {
    /// Starts every configured output. Must run inside the tokio runtime
    /// (network outputs spawn their tasks on it). The error is one line.
    /// The network outputs read and send nothing until `gate` opens.
    pub fn from_config(config: OutputConfig, gate: &gate::Gate) -> Result<Self, String> {
        let mut sinks = Sinks::default();
        if let Some(encoder) = config.stdout {
            let sink = stdout::StdoutSink::new(encoder, sinks.notifier());
            sinks.add(Box::new(sink));
        }
        if let Some(listener) = config.prometheus {
            let sink = prometheus::PrometheusSink::start(listener, gate.clone())?;
            sinks.add(Box::new(sink));
        }
        if let Some((influx, encoder)) = config.influx {
            let sink = influx::InfluxSink::start(influx, encoder, gate.clone())?;
            sinks.add(Box::new(sink));
        }
        if let Some(hook) = config.hook {
            sinks.add(Box::new(hook::HookSink::start(hook)?));
        }
        Ok(sinks)
    }

    pub fn notifier(&self) -> EndNotifier {
        EndNotifier(self.ended_tx.clone())
    }

    pub fn add(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hands the snapshot to every sink; the first that ended is reported
    /// (after all had it).
    pub fn send(&mut self, mut snapshot: Snapshot) -> Result<(), Ended> {
        for sink in &self.sinks {
            sink.report_health(&mut snapshot.agent);
        }
        let snapshot = Arc::new(snapshot);
        let mut result = Ok(());
        for sink in &mut self.sinks {
            if let Err(e) = sink.send(&snapshot) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Hands an attack's start or end to every sink; the first that ended
    /// is reported (after all had it).
    pub fn attack(&mut self, event: AttackEvent) -> Result<(), Ended> {
        let event = Arc::new(event);
        let mut result = Ok(());
        for sink in &mut self.sinks {
            if let Err(e) = sink.attack(&event) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// The receiving end of the sinks' reports that they ended, so that
    /// another thread than the one sending rounds can wait for them.
    pub fn take_ends(&mut self) -> Ends {
        Ends(self.ended_rx.take())
    }

    /// Resolves when a sink reports from its own thread or task that it ended.
    pub async fn ended(&mut self) -> Ended {
        let mut ends = Ends(self.ended_rx.take());
        let why = ends.next().await;
        self.ended_rx = ends.0;
        why
    }

    /// Lets every sink finish, all by `deadline`; the first error is returned.
    pub fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        let mut result = Ok(());
        for sink in &mut self.sinks {
            if let Err(e) = sink.finish(deadline) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

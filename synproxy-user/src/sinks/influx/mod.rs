//! InfluxDB output: each round's line protocol (exactly what stdout would
//! print) goes into a bounded buffer, and a writer thread POSTs it to InfluxDB
//! 1.x (`/write?db=DB&precision=ns`) or 2.x
//! (`/api/v2/write?org=O&bucket=B&precision=ns`), gzip, one request per round
//! or several rounds together when it is behind.
//!
//! `send` only appends to the buffer, so sampling never waits on the network.
//! The buffer holds `--influx-buffer-lines` lines; when full the oldest go,
//! counted, with a warning at most once a minute. At shutdown the writer gets
//! until the runtime's deadline to write what is left.
//!
//! Credentials never come from argv (they would show in the process list):
//! `INFLUX_TOKEN` or `--influx-token-file` (`Authorization: Token ...`), or
//! `INFLUX_USERNAME` and `INFLUX_PASSWORD` (basic authentication, 1.x).

mod buffer;
#[cfg(test)]
mod gate_tests;
mod plaintext;
mod writer;

use super::gate::Gate;
use super::line_protocol::LineEncoder;
use super::{Ended, Sink};
use crate::analysis::attack::AttackEvent;
use crate::cli::Cli;
use crate::sample::{AgentHealth, InfluxHealth, Snapshot};
use crate::sources::proc::host_file;
use hyper::header::HeaderValue;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use log::{info, warn};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use writer::{Endpoint, Shared, Writer};

pub use writer::{
    read_answer, Outcome, BATCH_LINES, FIRST_BACKOFF, MAX_BACKOFF, MAX_MESSAGE_CHARS,
    MAX_RETRY_AFTER, REQUEST_TIMEOUT,
};

/// A warning about dropped lines at most this often.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

mod config;
#[cfg(test)]
use config::tls_config;
pub use config::{Api, InfluxConfig, PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV};

/// The sink: encodes each round and queues it for the writer thread.
pub struct InfluxSink {
    encoder: LineEncoder,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    target: String,
    buffer_lines: u64,
    once: bool,
    /// Lines dropped since the last warning about it, and when that was.
    dropped_unreported: u64,
    last_drop_warning: Option<Instant>,
}

impl InfluxSink {
    /// Starts the writer thread, which sends nothing until `gate` is open.
    /// The error is one line.
    pub fn start(config: InfluxConfig, encoder: LineEncoder, gate: Gate) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(writer::CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        // Its own runtime on its own thread: the agent's shutdown waits for
        // the last flush synchronously, which must not stall the writer.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("--influx-url: cannot start the writer: {e}"))?;
        let shared = Arc::new(Shared::new(config.buffer_lines));
        let writer = Writer::new(
            Endpoint {
                client,
                write_uri: config.write_uri,
                authorization: config.authorization,
                target: config.target.clone(),
            },
            Arc::clone(&shared),
            gate,
        );
        let handle = std::thread::Builder::new()
            .name("influx".into())
            .spawn(move || runtime.block_on(writer.run()))
            .map_err(|e| format!("--influx-url: cannot start the writer: {e}"))?;
        info!("writing line protocol to InfluxDB at {}", config.target);
        Ok(Self {
            encoder,
            shared,
            writer: Some(handle),
            target: config.target,
            buffer_lines: config.buffer_lines,
            once: config.once,
            dropped_unreported: 0,
            last_drop_warning: None,
        })
    }

    fn warn_dropped(&mut self, dropped_now: u64, dropped_total: u64) {
        self.dropped_unreported += dropped_now;
        if self.dropped_unreported == 0 {
            return;
        }
        let due = self
            .last_drop_warning
            .is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY);
        if due {
            warn!(
                "InfluxDB {}: buffer full (--influx-buffer-lines {}): dropped the oldest {} ({dropped_total} since start) while the server cannot keep up or be reached",
                self.target,
                self.buffer_lines,
                writer::lines(self.dropped_unreported)
            );
            self.dropped_unreported = 0;
            self.last_drop_warning = Some(Instant::now());
        }
    }
}

impl InfluxSink {
    /// Hands `lines` to the writer's buffer (the oldest dropped when full).
    fn queue(&mut self, lines: Vec<u8>) {
        let (dropped_now, dropped_total) = {
            let mut state = self.shared.lock();
            let dropped = state.buffer.push(lines);
            (dropped, state.buffer.counts().dropped)
        };
        self.shared.wake.notify_one();
        self.warn_dropped(dropped_now, dropped_total);
    }
}

impl Sink for InfluxSink {
    /// Queues the round's lines; never waits on the network.
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        if self.writer.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(Ended::Failed(format!(
                "InfluxDB {}: the writer stopped unexpectedly",
                self.target
            )));
        }
        let mut lines = Vec::with_capacity(1024);
        self.encoder.encode_round(snapshot, &mut lines);
        self.queue(lines);
        Ok(())
    }

    /// An attack's start or end: its line is queued at once.
    fn attack(&mut self, event: &Arc<AttackEvent>) -> Result<(), Ended> {
        let mut lines = Vec::with_capacity(512);
        self.encoder.encode_attack(event, &mut lines);
        self.queue(lines);
        Ok(())
    }

    /// The last flush: the writer sends what is buffered until `deadline`
    /// (retrying with backoff within it), then stops.
    fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        self.shared.lock().closing = Some(deadline);
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if writer.is_finished() {
                let _ = writer.join();
            }
        }
        let (left, dropped_total) = {
            let state = self.shared.lock();
            (state.buffer.buffered(), state.buffer.counts().dropped)
        };
        self.last_drop_warning = None;
        self.warn_dropped(0, dropped_total);
        if left == 0 {
            return Ok(());
        }
        let message = format!(
            "InfluxDB {}: exiting with {} not written",
            self.target,
            writer::lines(left)
        );
        if self.once {
            Err(Ended::Failed(message))
        } else {
            warn!("{message}");
            Ok(())
        }
    }

    fn report_health(&self, health: &mut AgentHealth) {
        let state = self.shared.lock();
        let counts = state.buffer.counts();
        health.influx = Some(InfluxHealth {
            written_lines: counts.written,
            buffered_lines: state.buffer.buffered(),
            dropped_lines: counts.dropped,
            rejected_lines: counts.rejected,
        });
    }
}

//! The InfluxDB writer: a thread of its own, with its own small tokio
//! runtime, that takes batches from the buffer and POSTs them (gzip). It is
//! the only place that waits on the network, so sampling never does; and the
//! runtime's synchronous shutdown can wait for its last flush without
//! blocking it.
//!
//! Retries: connection errors, timeouts, 5xx and 429 are retried with
//! exponential backoff (1 s doubling to 30 s, jittered to 50-100 %), at least
//! as long as a `Retry-After` asks (capped at 10 minutes). Any other 4xx drops
//! the batch: the server has said it will never take it. 413 (too large)
//! halves the batch size first, while a batch has more than one round.

use super::buffer::{Batch, LineBuffer};
use crate::sinks::gate::Gate;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use log::{debug, error, info, warn};
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Lines per request at most (InfluxDB's advice for batch sizes); a round
/// with more is still sent whole.
pub const BATCH_LINES: u64 = 5000;
/// A request without an answer by then is abandoned and retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server asking for longer than this is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// How much of an error answer is read (for the log line).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How much of the server's message is logged.
pub const MAX_MESSAGE_CHARS: usize = 400;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the sink and the writer share.
pub struct Shared {
    pub state: Mutex<State>,
    /// Rings when lines were queued or shutdown began.
    pub wake: Notify,
}

pub struct State {
    pub buffer: LineBuffer,
    /// Set at shutdown: write what is buffered by then, and stop.
    pub closing: Option<Instant>,
}

impl Shared {
    pub fn new(buffer_lines: u64) -> Self {
        Self {
            state: Mutex::new(State {
                buffer: LineBuffer::new(buffer_lines),
                closing: None,
            }),
            wake: Notify::new(),
        }
    }

    /// The state, also after a panic elsewhere (the counts stay usable).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// How a request went.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Worth trying again: no connection, no answer, 5xx, 429.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good (4xx other than 429, or an answer a writer cannot act
    /// on, such as a redirect): the batch is dropped.
    Rejected {
        status: u16,
        message: String,
    },
    /// 413: the body is too large for the server.
    TooLarge {
        message: String,
    },
}

/// What the server's answer means for the batch: its status, `Retry-After`
/// and, for an error, its message (the first 64 KiB of the body). A body that
/// breaks off is an empty message, not an error: the status has decided.
pub async fn read_answer<B>(response: hyper::Response<B>) -> Outcome
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = response.status();
    let retry_after = parse_retry_after(response.headers().get(RETRY_AFTER));
    // Only error answers have a message worth reading.
    let message = if status.is_success() {
        String::new()
    } else {
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        one_line_message(&body, status)
    };
    classify(status, retry_after, message)
}

/// What an answer means for the batch.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, message: String) -> Outcome {
    if status.is_success() {
        Outcome::Written
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry {
            reason: format!("the server answered {}: {message}", describe_status(status)),
            retry_after,
        }
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        Outcome::TooLarge { message }
    } else {
        Outcome::Rejected {
            status: status.as_u16(),
            message,
        }
    }
}

fn describe_status(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `Retry-After` in seconds: `delay-seconds`, digits only (RFC 9110; a sign
/// is not one). The HTTP-date form is not used by InfluxDB and is ignored:
/// the backoff applies. Too many digits for a u64 are the cap.
pub fn parse_retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The server's message as one log-friendly line.
pub fn one_line_message(body: &[u8], status: StatusCode) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.trim().chars().count() > MAX_MESSAGE_CHARS {
        line.push_str("...");
    }
    if line.is_empty() {
        line = format!("(no message; {})", describe_status(status));
    }
    line
}

/// Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 30 s, each
/// scaled by a random factor in [0.5, 1) so that agents restarted together
/// do not retry together.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait before the next try; `random` in [0, 1).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let exponent = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
        full.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in [0, 1) for jitter (std's per-process random hash keys; no
/// need for more).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Everything one request needs.
pub struct Endpoint {
    pub client: HttpClient,
    /// Where batches are POSTed, query included.
    pub write_uri: Uri,
    pub authorization: Option<HeaderValue>,
    /// For log lines: the URL and database or bucket, never credentials.
    pub target: String,
}

impl Endpoint {
    /// One POST of `body` (gzip), until `REQUEST_TIMEOUT` or `deadline`.
    async fn post(&self, body: &[u8], deadline: Option<Instant>) -> Outcome {
        let compressed = match gzip(body) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Outcome::Retry {
                    reason: format!("cannot compress the batch: {e}"),
                    retry_after: None,
                }
            }
        };
        let mut request = Request::post(self.write_uri.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_ENCODING, "gzip")
            .header(
                USER_AGENT,
                concat!("synproxy-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = match request.body(Full::new(Bytes::from(compressed))) {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Rejected {
                    status: 0,
                    message: format!("cannot build the request: {e}"),
                }
            }
        };
        let timeout = Instant::now() + REQUEST_TIMEOUT;
        let until = deadline.map_or(timeout, |d| d.min(timeout));
        let exchange = async {
            let response = self.client.request(request).await?;
            Ok::<_, hyper_util::client::legacy::Error>(read_answer(response).await)
        };
        match tokio::time::timeout_at(tokio::time::Instant::from_std(until), exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Retry {
                reason: error_chain(&e),
                retry_after: None,
            },
            Err(_) => Outcome::Retry {
                reason: if until < timeout {
                    "no answer before the shutdown deadline".into()
                } else {
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
                },
                retry_after: None,
            },
        }
    }
}

/// An error with its causes: hyper's own text ("client error (Connect)")
/// says little without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// "1 line", "2 lines".
pub fn lines(n: u64) -> String {
    if n == 1 {
        "1 line".into()
    } else {
        format!("{n} lines")
    }
}

pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), Default::default());
    encoder.write_all(body)?;
    encoder.finish()
}

/// The writer's loop and what it remembers for its log lines.
pub struct Writer {
    pub endpoint: Endpoint,
    pub shared: Arc<Shared>,
    batch_lines: u64,
    backoff: Backoff,
    /// The reason last logged in the current run of failed requests.
    failing: Option<String>,
    failed_attempts: u64,
    /// The refusal last logged; each distinct one is logged once until a
    /// write succeeds.
    last_rejection: Option<(u16, String)>,
    /// Nothing is sent before the capability drop.
    gate: Gate,
}

impl Writer {
    pub fn new(endpoint: Endpoint, shared: Arc<Shared>, gate: Gate) -> Self {
        Self {
            endpoint,
            shared,
            batch_lines: BATCH_LINES,
            backoff: Backoff::default(),
            failing: None,
            failed_attempts: 0,
            last_rejection: None,
            gate,
        }
    }

    /// Writes batches until shutdown, then until the buffer is empty or the
    /// shutdown deadline has passed.
    pub async fn run(mut self) {
        if !self.gate.opened().await {
            return;
        }
        let mut retry_at: Option<Instant> = None;
        let mut closing_seen = false;
        loop {
            let closing = self.shared.lock().closing;
            if let Some(deadline) = closing {
                if Instant::now() >= deadline {
                    return;
                }
                // Shutdown cuts a pending backoff short: one more try now.
                if !std::mem::replace(&mut closing_seen, true) {
                    retry_at = None;
                }
            }
            if let Some(at) = retry_at {
                let wake_at = closing.map_or(at, |deadline| at.min(deadline));
                if Instant::now() < wake_at {
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
                        // New lines or shutdown: look again (the backoff
                        // holds for new lines).
                        () = self.shared.wake.notified() => continue,
                    }
                    continue;
                }
                retry_at = None;
            }
            let batch = self.shared.lock().buffer.take_batch(self.batch_lines);
            let Some(batch) = batch else {
                if closing.is_some() {
                    return;
                }
                self.shared.wake.notified().await;
                continue;
            };
            let outcome = self.endpoint.post(&batch.body, closing).await;
            retry_at = self.settle(&batch, outcome);
        }
    }

    /// Books the outcome in the buffer, logs what is worth logging, and
    /// says when to try again (`None`: go on at once).
    fn settle(&mut self, batch: &Batch, outcome: Outcome) -> Option<Instant> {
        let target = &self.endpoint.target;
        match outcome {
            Outcome::Written => {
                let buffered = {
                    let mut state = self.shared.lock();
                    state.buffer.written(batch);
                    state.buffer.buffered()
                };
                if self.failing.take().is_some() {
                    info!(
                        "InfluxDB {target}: writing again after {} failed attempts ({} still buffered)",
                        self.failed_attempts,
                        lines(buffered)
                    );
                }
                self.failed_attempts = 0;
                self.backoff.reset();
                self.last_rejection = None;
                debug!("InfluxDB {target}: wrote {}", lines(batch.lines));
                None
            }
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                let buffered = {
                    let mut state = self.shared.lock();
                    state.buffer.failed();
                    state.buffer.buffered()
                };
                self.failed_attempts += 1;
                let delay = self
                    .backoff
                    .next_delay(jitter())
                    .max(retry_after.unwrap_or_default());
                if self.failing.as_deref() != Some(reason.as_str()) {
                    warn!(
                        "InfluxDB {target}: {reason}; retrying (next in {:.1} s, backing off up to {} s; {} buffered)",
                        delay.as_secs_f64(),
                        MAX_BACKOFF.as_secs(),
                        lines(buffered)
                    );
                    self.failing = Some(reason);
                } else {
                    debug!(
                        "InfluxDB {target}: {reason}; retrying in {:.1} s",
                        delay.as_secs_f64()
                    );
                }
                Some(Instant::now() + delay)
            }
            Outcome::TooLarge { message } if batch.rounds > 1 => {
                self.shared.lock().buffer.failed();
                self.batch_lines = (batch.lines / 2).max(1);
                warn!(
                    "InfluxDB {target}: 413 Payload Too Large for {} ({message}); sending at most {} per request from now on",
                    lines(batch.lines),
                    lines(self.batch_lines)
                );
                None
            }
            Outcome::TooLarge { message } => self.reject(batch, 413, message),
            Outcome::Rejected { status, message } => self.reject(batch, status, message),
        }
    }

    fn reject(&mut self, batch: &Batch, status: u16, message: String) -> Option<Instant> {
        self.shared.lock().buffer.rejected(batch);
        // The server answered: whatever failed before is over.
        self.failing = None;
        self.failed_attempts = 0;
        self.backoff.reset();
        let key = (status, message);
        if self.last_rejection.as_ref() != Some(&key) {
            let status = StatusCode::from_u16(key.0)
                .map(describe_status)
                .unwrap_or_else(|_| key.0.to_string());
            error!(
                "InfluxDB {}: the server refused {} with {status}: {}; not retried, dropped (logged once until a write succeeds)",
                self.endpoint.target,
                lines(batch.lines),
                key.1
            );
            self.last_rejection = Some(key);
        }
        None
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;

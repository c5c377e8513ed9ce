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

/// The environment variables that carry credentials.
pub const TOKEN_ENV: &str = "INFLUX_TOKEN";
pub const USERNAME_ENV: &str = "INFLUX_USERNAME";
pub const PASSWORD_ENV: &str = "INFLUX_PASSWORD";

/// A warning about dropped lines at most this often.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Which write API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// InfluxDB 1.x: `/write?db=DB`.
    V1 { db: String },
    /// InfluxDB 2.x (and 1.8+, 3.x): `/api/v2/write?org=O&bucket=B`.
    V2 { org: String, bucket: String },
}

/// How to authenticate.
#[derive(Clone, PartialEq, Eq)]
enum Credentials {
    None,
    Token(String),
    Basic { username: String, password: String },
}

/// Where and how to write, checked at start-up.
pub struct InfluxConfig {
    write_uri: Uri,
    target: String,
    authorization: Option<HeaderValue>,
    tls: rustls::ClientConfig,
    buffer_lines: u64,
    /// `--once`: lines left unwritten at exit make the exit status non-zero.
    once: bool,
}

impl std::fmt::Debug for InfluxConfig {
    // No credentials in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("write_uri", &self.write_uri)
            .field("authorization", &self.authorization.is_some())
            .field("buffer_lines", &self.buffer_lines)
            .finish()
    }
}

impl InfluxConfig {
    /// The InfluxDB output from the flags and `env` (the environment), or
    /// `None` without `--influx-url`. Errors are one line naming the flag or
    /// variable. The flag combinations were checked by [`Cli::validate`].
    pub fn from_cli(
        cli: &Cli,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let Some(url) = &cli.influx_url else {
            return Ok(None);
        };
        let api = match (&cli.influx_db, &cli.influx_bucket, &cli.influx_org) {
            (Some(db), None, None) => Api::V1 { db: db.clone() },
            (None, Some(bucket), Some(org)) => Api::V2 {
                org: org.clone(),
                bucket: bucket.clone(),
            },
            _ => {
                return Err(format!(
                    "--influx-url {url}: needs --influx-db DB (InfluxDB 1.x) or --influx-bucket B --influx-org O (2.x)"
                ))
            }
        };
        let (write_uri, https) = write_uri(url, &api)?;
        let credentials = credentials(cli, &api, &env)?;
        let authorization = authorization_header(&credentials)?;
        let secret = match &credentials {
            Credentials::None => None,
            Credentials::Token(_) => Some("token"),
            Credentials::Basic { .. } => Some("password"),
        };
        if let Some(warning) = plaintext::warning(&write_uri, https, secret) {
            warn!("{warning}");
        }
        let tls = tls_config(https).map_err(|e| format!("--influx-url {url}: {e}"))?;
        let target = match &api {
            Api::V1 { db } => format!("{url} (database {db})"),
            Api::V2 { org, bucket } => format!("{url} (org {org}, bucket {bucket})"),
        };
        Ok(Some(Self {
            write_uri,
            target,
            authorization,
            tls,
            buffer_lines: cli.influx_buffer_lines,
            once: cli.once,
        }))
    }

    /// The URL batches are POSTed to.
    pub fn write_uri(&self) -> &Uri {
        &self.write_uri
    }
}

/// The write endpoint under the base URL `url` (which may carry a path, for
/// a server behind a reverse proxy), and whether it is HTTPS.
fn write_uri(url: &str, api: &Api) -> Result<(Uri, bool), String> {
    let not_a_url = || {
        format!(
            "--influx-url {url:?}: not a URL (expected http://HOST:PORT or https://HOST:PORT, for example http://127.0.0.1:8086)"
        )
    };
    let uri: Uri = url.parse().map_err(|_| not_a_url())?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "--influx-url {url:?}: scheme {other:?} is not supported (use http or https)"
            ))
        }
        None => return Err(not_a_url()),
    };
    let Some(authority) = uri.authority() else {
        return Err(not_a_url());
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "--influx-url: credentials do not belong in the URL (the process list shows it); set {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV}"
        ));
    }
    if authority.host().is_empty() {
        return Err(not_a_url());
    }
    if uri.query().is_some() {
        return Err(format!(
            "--influx-url {url:?}: no query string, please (the agent adds the database or bucket and precision=ns)"
        ));
    }
    let base = uri.path().trim_end_matches('/');
    let path_and_query = match api {
        Api::V1 { db } => format!("{base}/write?db={}&precision=ns", percent_encode(db)),
        Api::V2 { org, bucket } => format!(
            "{base}/api/v2/write?org={}&bucket={}&precision=ns",
            percent_encode(org),
            percent_encode(bucket)
        ),
    };
    let scheme = if https { "https" } else { "http" };
    let full = format!("{scheme}://{authority}{path_and_query}");
    let uri = full.parse().map_err(|_| not_a_url())?;
    Ok((uri, https))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn credentials(
    cli: &Cli,
    api: &Api,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    // An empty variable counts as unset (as shells and unit files leave them).
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let env_token = var(TOKEN_ENV);
    let token = match &cli.influx_token_file {
        Some(path) => {
            if env_token.is_some() {
                return Err(format!(
                    "--influx-token-file {}: {TOKEN_ENV} is set too; use one of them",
                    path.display()
                ));
            }
            let bytes = host_file::read_regular(path, TOKEN_FILE_CAP).map_err(|e| {
                let reason = match e.io() {
                    Some(io) => describe_read_error(io),
                    None => e.to_string(),
                };
                format!("--influx-token-file {}: {reason}", path.display())
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("--influx-token-file {}: not UTF-8 text", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!(
                    "--influx-token-file {}: the file is empty",
                    path.display()
                ));
            }
            Some(token.to_string())
        }
        None => env_token,
    };
    let username = var(USERNAME_ENV);
    let password = var(PASSWORD_ENV);
    match (token, username, password) {
        (Some(_), Some(_), _) => Err(format!(
            "{USERNAME_ENV}: a token is set too ({TOKEN_ENV} or --influx-token-file); use a token, or a username and password"
        )),
        (Some(token), None, _) => Ok(Credentials::Token(token)),
        (None, Some(username), Some(password)) => match api {
            Api::V1 { .. } => Ok(Credentials::Basic { username, password }),
            Api::V2 { .. } => Err(format!(
                "{USERNAME_ENV}: username and password are for the 1.x API (--influx-db); the 2.x API takes a token ({TOKEN_ENV} or --influx-token-file)"
            )),
        },
        (None, Some(_), None) => Err(format!("{USERNAME_ENV} is set without {PASSWORD_ENV}")),
        (None, None, Some(_)) => Err(format!("{PASSWORD_ENV} is set without {USERNAME_ENV}")),
        (None, None, None) => Ok(Credentials::None),
    }
}

/// Most bytes read from `--influx-token-file` (tokens are under 100 bytes).
const TOKEN_FILE_CAP: usize = 64 << 10;

fn describe_read_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot read it: {e}"),
    }
}

fn authorization_header(credentials: &Credentials) -> Result<Option<HeaderValue>, String> {
    let (value, source) = match credentials {
        Credentials::None => return Ok(None),
        Credentials::Token(token) => (
            format!("Token {token}"),
            format!("{TOKEN_ENV} or --influx-token-file"),
        ),
        Credentials::Basic { username, password } => (
            format!(
                "Basic {}",
                base64(format!("{username}:{password}").as_bytes())
            ),
            format!("{USERNAME_ENV}/{PASSWORD_ENV}"),
        ),
    };
    let mut header = HeaderValue::from_str(&value)
        .map_err(|_| format!("{source}: not usable in an HTTP header (control characters?)"))?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// Standard base64 with padding (RFC 4648), for basic authentication.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// TLS with rustls (ring) and the system's CA certificates, loaded only for
/// an https URL (a plain http URL must not depend on them).
fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs_or_error()?;
        let (added, _ignored) = roots.add_parsable_certificates(found);
        if added == 0 {
            return Err(
                "no usable CA certificates on this host to check the server's (install ca-certificates)"
                    .into(),
            );
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The system's CA certificates (as `SSL_CERT_FILE`/`SSL_CERT_DIR` or the
/// distribution's bundle say).
fn rustls_native_certs_or_error() -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String>
{
    let loaded = rustls_native_certs::load_native_certs();
    if loaded.certs.is_empty() {
        let why = loaded
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "no CA certificates found on this host to check the server's (install ca-certificates){why}"
        ));
    }
    Ok(loaded.certs)
}

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
        let (dropped_now, dropped_total) = {
            let mut state = self.shared.lock();
            let dropped = state.buffer.push(lines);
            (dropped, state.buffer.counts().dropped)
        };
        self.shared.wake.notify_one();
        self.warn_dropped(dropped_now, dropped_total);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("synproxy-agent").chain(args.iter().copied()))
            .expect("flags parse")
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Option<InfluxConfig>, String> {
        let cli = cli(args);
        cli.validate()?;
        InfluxConfig::from_cli(&cli, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn uri(args: &[&str]) -> String {
        config(args, &[])
            .expect("valid")
            .expect("configured")
            .write_uri()
            .to_string()
    }

    #[test]
    fn write_urls() {
        assert_eq!(
            uri(&[
                "--influx-url",
                "http://127.0.0.1:8086",
                "--influx-db",
                "telegraf"
            ]),
            "http://127.0.0.1:8086/write?db=telegraf&precision=ns"
        );
        assert_eq!(
            uri(&["--influx-url", "http://h:8086/", "--influx-db", "a b&c"]),
            "http://h:8086/write?db=a%20b%26c&precision=ns"
        );
        assert_eq!(
            uri(&[
                "--influx-url",
                "https://influx.example:8086/proxy/",
                "--influx-org",
                "ops",
                "--influx-bucket",
                "net/1h"
            ]),
            "https://influx.example:8086/proxy/api/v2/write?org=ops&bucket=net%2F1h&precision=ns"
        );
        assert_eq!(
            uri(&["--influx-url", "http://[::1]:8086", "--influx-db", "d"]),
            "http://[::1]:8086/write?db=d&precision=ns"
        );
        assert!(config(&[], &[]).expect("valid").is_none());
    }

    #[test]
    fn bad_urls_name_the_flag() {
        for (url, want) in [
            ("127.0.0.1:8086", "not a URL"),
            ("localhost", "not a URL"),
            ("ftp://h:21", "scheme \"ftp\""),
            ("http://", "not a URL"),
            ("http://u:p@h:8086", "credentials do not belong in the URL"),
            ("http://h:8086/?db=x", "no query string"),
            ("http://h:8086 x", "not a URL"),
        ] {
            let err = config(&["--influx-url", url, "--influx-db", "d"], &[]).expect_err(url);
            assert!(err.starts_with("--influx-url"), "{url}: {err}");
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn flag_combinations() {
        let url = ["--influx-url", "http://h:8086"];
        let with = |more: &[&str]| {
            let args: Vec<&str> = url.iter().chain(more).copied().collect();
            config(&args, &[]).map(|c| c.is_some())
        };
        assert_eq!(with(&["--influx-db", "d"]), Ok(true));
        assert_eq!(
            with(&["--influx-bucket", "b", "--influx-org", "o"]),
            Ok(true)
        );
        for (more, want) in [
            (&[][..], "--influx-url http://h:8086: needs --influx-db"),
            (
                &["--influx-db", "d", "--influx-bucket", "b"][..],
                "--influx-db with --influx-bucket",
            ),
            (
                &["--influx-db", "d", "--influx-org", "o"][..],
                "--influx-org is for the 2.x API",
            ),
            (
                &["--influx-bucket", "b"][..],
                "--influx-bucket needs --influx-org",
            ),
            (
                &["--influx-org", "o"][..],
                "--influx-org needs --influx-bucket",
            ),
            (
                &["--influx-db", ""][..],
                "--influx-db \"\": must be non-empty",
            ),
        ] {
            let err = with(more).expect_err(want);
            assert!(err.starts_with(want), "{more:?}: {err}");
        }
        for stray in [
            &["--influx-db", "d"][..],
            &["--influx-bucket", "b"][..],
            &["--influx-token-file", "/x"][..],
        ] {
            let err = config(stray, &[]).map(|c| c.is_some()).expect_err("stray");
            assert!(err.ends_with(": needs --influx-url"), "{err}");
        }
        assert!(Cli::try_parse_from(["synproxy-agent", "--influx-buffer-lines", "0"]).is_err());
    }

    #[test]
    fn stdout_goes_quiet_with_influx_unless_asked() {
        assert!(cli(&[]).stdout_enabled());
        assert!(!cli(&["--influx-url", "http://h:1", "--influx-db", "d"]).stdout_enabled());
        assert!(
            cli(&["--influx-url", "http://h:1", "--influx-db", "d", "--stdout"]).stdout_enabled()
        );
    }

    fn auth(args: &[&str], env: &[(&str, &str)]) -> Result<Option<String>, String> {
        let mut all = vec!["--influx-url", "http://h:8086"];
        all.extend_from_slice(args);
        let config = config(&all, env)?.expect("configured");
        Ok(config
            .authorization
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()))
    }

    #[test]
    fn credentials_from_the_environment_or_a_file() {
        let v1 = ["--influx-db", "d"];
        let v2 = ["--influx-bucket", "b", "--influx-org", "o"];
        assert_eq!(auth(&v1, &[]), Ok(None));
        assert_eq!(
            auth(&v2, &[(TOKEN_ENV, "s3cr3t")]),
            Ok(Some("Token s3cr3t".into()))
        );
        assert_eq!(
            auth(
                &v1,
                &[(USERNAME_ENV, "Aladdin"), (PASSWORD_ENV, "open sesame")]
            ),
            Ok(Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into()))
        );
        // Empty variables count as unset.
        assert_eq!(auth(&v1, &[(TOKEN_ENV, "")]), Ok(None));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let path = file.to_string_lossy().into_owned();
        let with_file: Vec<&str> = v2
            .iter()
            .copied()
            .chain(["--influx-token-file", &path])
            .collect();
        assert_eq!(auth(&with_file, &[]), Ok(Some("Token from-file".into())));

        for (args, env, want) in [
            (
                &with_file[..],
                &[(TOKEN_ENV, "t")][..],
                "--influx-token-file",
            ),
            (
                &v1[..],
                &[(TOKEN_ENV, "t"), (USERNAME_ENV, "u")][..],
                USERNAME_ENV,
            ),
            (
                &v1[..],
                &[(USERNAME_ENV, "u")][..],
                "INFLUX_USERNAME is set without INFLUX_PASSWORD",
            ),
            (
                &v1[..],
                &[(PASSWORD_ENV, "p")][..],
                "INFLUX_PASSWORD is set without INFLUX_USERNAME",
            ),
            (
                &v2[..],
                &[(USERNAME_ENV, "u"), (PASSWORD_ENV, "p")][..],
                "INFLUX_USERNAME: username and password are for the 1.x API",
            ),
            (
                &v1[..],
                &[(TOKEN_ENV, "a\nb")][..],
                "INFLUX_TOKEN or --influx-token-file: not usable",
            ),
        ] {
            let err = auth(args, env).expect_err(want);
            assert!(err.starts_with(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }

        let missing = dir.path().join("missing");
        let missing = missing.to_string_lossy().into_owned();
        let args: Vec<&str> = v2
            .iter()
            .copied()
            .chain(["--influx-token-file", &missing])
            .collect();
        let err = auth(&args, &[]).expect_err("missing file");
        assert_eq!(err, format!("--influx-token-file {missing}: no such file"));
        std::fs::write(&file, " \n").expect("write");
        let err = auth(&with_file, &[]).expect_err("empty file");
        assert!(err.ends_with("the file is empty"), "{err}");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn debug_output_has_no_credentials() {
        let args = ["--influx-url", "http://h:8086", "--influx-db", "d"];
        let config = config(&args, &[(TOKEN_ENV, "s3cr3t")])
            .expect("valid")
            .expect("configured");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}

//! Where and how to write: the write URL of each API, the credentials
//! (environment or token file, never argv) and the TLS client configuration.

use super::*;

/// The environment variables that carry credentials.
pub const TOKEN_ENV: &str = "INFLUX_TOKEN";
pub const USERNAME_ENV: &str = "INFLUX_USERNAME";
pub const PASSWORD_ENV: &str = "INFLUX_PASSWORD";

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
    pub(super) write_uri: Uri,
    pub(super) target: String,
    pub(super) authorization: Option<HeaderValue>,
    pub(super) tls: rustls::ClientConfig,
    pub(super) buffer_lines: u64,
    /// `--once`: lines left unwritten at exit make the exit status non-zero.
    pub(super) once: bool,
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
pub(super) fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

//! `--web-config-file`: the Prometheus exporter-toolkit web configuration
//! (the file node_exporter's `--web.config.file` reads and `promtool check
//! web-config` validates): TLS and basic authentication of `/metrics`.
//!
//! Parsed strictly like the toolkit (an unknown key is an error). Keys the
//! toolkit knows but this agent does not implement are refused by name
//! rather than ignored, so every file the agent accepts is one the toolkit
//! accepts too. Relative paths are relative to the file's directory.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest web configuration file read (it holds a few paths and hashes).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a web configuration file is refused; `Display` is one line naming the
/// key (or the file) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("{0}")]
    Syntax(String),
    #[error("{key}: {problem}")]
    Key { key: &'static str, problem: String },
    #[error("{key}: {problem}")]
    File { key: &'static str, problem: String },
}

fn key(key: &'static str, problem: impl Into<String>) -> WebConfigError {
    WebConfigError::Key {
        key,
        problem: problem.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Known to the toolkit, not implemented here: refused by name.
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    client_ca: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<serde_yaml_ng::Value>,
}

/// The toolkit's `client_auth_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // The toolkit's older name.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    /// Whether the client's certificate is checked against `client_ca_file`.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

/// TLS protocol versions rustls offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(field: &'static str, text: &str) -> Result<Self, WebConfigError> {
        match text {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            "TLS10" | "TLS11" => Err(key(
                field,
                format!("{text} is not supported (TLS12 and TLS13 are)"),
            )),
            _ => Err(key(field, format!("unknown TLS version: {text}"))),
        }
    }
}

/// `tls_server_config`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher suites by their IANA (and Go) names; empty: rustls' own.
    pub cipher_suites: Vec<String>,
}

/// A checked web configuration (the TLS files not read yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name to bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
}

impl WebConfig {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, WebConfigError> {
        use std::io::Read;
        // A FIFO would block the open, a device never end.
        let meta = std::fs::metadata(path).map_err(|e| WebConfigError::Read(e.to_string()))?;
        if !meta.is_file() {
            return Err(WebConfigError::Read("not a regular file".into()));
        }
        let file = std::fs::File::open(path).map_err(|e| WebConfigError::Read(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| WebConfigError::Read(e.to_string()))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(WebConfigError::Read(format!(
                "larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir)
    }

    /// Checks `text`; relative paths are joined to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, WebConfigError> {
        // An empty file (or only comments) is an empty configuration.
        let raw: RawConfig = match serde_yaml_ng::from_str::<Option<RawConfig>>(text) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(e) => return Err(WebConfigError::Syntax(one_line(&e.to_string()))),
        };
        if raw.rate_limit.is_some() {
            return Err(unsupported("rate_limit"));
        }
        if let Some(http) = &raw.http_server_config {
            if http.headers.is_some() {
                return Err(unsupported("http_server_config.headers"));
            }
            // `http2` is accepted: the endpoint speaks HTTP/1.1 either way.
            let _ = http.http2;
        }
        let tls = match raw.tls_server_config {
            Some(tls) => tls_settings(tls, dir)?,
            None => None,
        };
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(WebConfigError::Key {
                    key: "basic_auth_users",
                    problem: format!("{user}: not a bcrypt hash (make one with htpasswd -nBC 10 \"\" | tr -d ':\\n')"),
                });
            }
        }
        Ok(Self { tls, users })
    }
}

fn unsupported(name: &'static str) -> WebConfigError {
    key(name, "not supported by synproxy-agent")
}

/// serde_yaml's message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tls_settings(raw: RawTls, dir: &Path) -> Result<Option<TlsSettings>, WebConfigError> {
    for (name, value) in [
        ("tls_server_config.cert", &raw.cert),
        ("tls_server_config.key", &raw.key),
        ("tls_server_config.client_ca", &raw.client_ca),
        (
            "tls_server_config.curve_preferences",
            &raw.curve_preferences,
        ),
        (
            "tls_server_config.client_allowed_sans",
            &raw.client_allowed_sans,
        ),
    ] {
        if value.is_some() {
            return Err(unsupported(name));
        }
    }
    let _ = raw.prefer_server_cipher_suites; // rustls always picks in its own order.
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let cert = nonempty(raw.cert_file);
    let key_file = nonempty(raw.key_file);
    let ca = nonempty(raw.client_ca_file);
    let auth_text = raw.client_auth_type.unwrap_or_default();
    let min = raw
        .min_version
        .map(|v| TlsVersion::parse("tls_server_config.min_version", &v))
        .transpose()?;
    let max = raw
        .max_version
        .map(|v| TlsVersion::parse("tls_server_config.max_version", &v))
        .transpose()?;
    let client_auth = ClientAuth::parse(&auth_text).ok_or_else(|| {
        key(
            "tls_server_config.client_auth_type",
            format!("unknown value {auth_text:?} (NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"),
        )
    })?;
    // As the toolkit: TLS is on when any of these is set.
    if cert.is_none() && key_file.is_none() && ca.is_none() && auth_text.is_empty() {
        return Ok(None);
    }
    let Some(cert) = cert else {
        return Err(key("tls_server_config.cert_file", "missing"));
    };
    let Some(key_path) = key_file else {
        return Err(key("tls_server_config.key_file", "missing"));
    };
    if ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(key(
            "tls_server_config.client_ca_file",
            "set without a client_auth_type that asks for a certificate",
        ));
    }
    if client_auth.verifies() && ca.is_none() {
        return Err(key(
            "tls_server_config.client_ca_file",
            format!("needed by client_auth_type {auth_text}"),
        ));
    }
    let min_version = min.unwrap_or(TlsVersion::Tls12);
    let max_version = max.unwrap_or(TlsVersion::Tls13);
    if min_version > max_version {
        return Err(key("tls_server_config.min_version", "above max_version"));
    }
    let cipher_suites = raw.cipher_suites.unwrap_or_default();
    for name in &cipher_suites {
        super::tls::check_cipher_suite(name)
            .map_err(|problem| key("tls_server_config.cipher_suites", problem))?;
    }
    Ok(Some(TlsSettings {
        cert_file: dir.join(cert),
        key_file: dir.join(key_path),
        client_ca_file: ca.map(|c| dir.join(c)),
        client_auth,
        min_version,
        max_version,
        cipher_suites,
    }))
}

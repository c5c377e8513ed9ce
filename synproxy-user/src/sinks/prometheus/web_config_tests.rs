//! The web configuration format: what is accepted, and the one-line error
//! naming the key for what is not.

use super::tls::server_config;
use super::web_config::{ClientAuth, TlsSettings, TlsVersion, WebConfig};
use std::path::Path;

const HASH: &str = "$2y$10$JkSnyRmOF2I7stXtJPDdLussQCQNgeJ2V4n9YmJvhbp53oMjleLJG";

fn parse(text: &str) -> Result<WebConfig, String> {
    WebConfig::parse(text, Path::new("/etc/synproxy-agent")).map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    let e = parse(text).expect_err(text);
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn a_full_file_is_read() {
    let config = parse(&format!(
        "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: /keys/server.key\n  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\nhttp_server_config:\n  http2: false\nbasic_auth_users:\n  prometheus: '{HASH}'\n"
    ))
    .unwrap();
    let tls = config.tls.unwrap();
    // Relative to the file's directory, as the toolkit does.
    assert_eq!(
        tls.cert_file,
        Path::new("/etc/synproxy-agent/tls/server.crt")
    );
    assert_eq!(tls.key_file, Path::new("/keys/server.key"));
    assert_eq!(
        tls.client_ca_file.as_deref(),
        Some(Path::new("/etc/synproxy-agent/ca.crt"))
    );
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.max_version, TlsVersion::Tls13);
    assert_eq!(config.users.len(), 1);
}

#[test]
fn empty_and_auth_only_files() {
    assert_eq!(parse("").unwrap(), WebConfig::default());
    assert_eq!(parse("# nothing\n").unwrap(), WebConfig::default());
    let auth = parse(&format!("basic_auth_users:\n  a: {HASH}\n")).unwrap();
    assert!(auth.tls.is_none());
    // TLS settings without a certificate, key, CA or client auth: plain HTTP.
    assert!(parse("tls_server_config:\n  min_version: TLS12\n")
        .unwrap()
        .tls
        .is_none());
}

#[test]
fn unknown_keys_are_refused_by_name() {
    assert!(error("tls_server_config:\n  cert_file: a\n  key_file: b\n  foo: 1\n").contains("foo"));
    assert!(error("foo: 1\n").contains("foo"));
    assert!(error("http_server_config:\n  http3: true\n").contains("http3"));
}

#[test]
fn toolkit_keys_the_agent_does_not_implement_are_refused_by_name() {
    for (text, key) in [
        ("rate_limit:\n  burst: 1\n", "rate_limit"),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
            "http_server_config.headers",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [X25519]\n",
            "tls_server_config.curve_preferences",
        ),
        (
            "tls_server_config:\n  cert: PEM\n",
            "tls_server_config.cert",
        ),
    ] {
        let e = error(text);
        assert!(e.starts_with(key) && e.contains("not supported"), "{e}");
    }
}

#[test]
fn invalid_values_name_their_key() {
    for (text, key) in [
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: a\n",
            "tls_server_config.key_file",
        ),
        (
            "tls_server_config:\n  key_file: b\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "tls_server_config.client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            "tls_server_config.cipher_suites",
        ),
        ("basic_auth_users:\n  alice: notahash\n", "basic_auth_users"),
    ] {
        let e = error(text);
        assert!(e.starts_with(key), "{text}: {e}");
    }
    // YAML that is not a mapping of the right shapes.
    assert!(error("tls_server_config: [1, 2]\n").contains("tls_server_config"));
    assert!(!error("basic_auth_users: {a: [1]}\n").is_empty());
}

#[test]
fn the_client_auth_types_of_the_toolkit() {
    for (name, auth) in [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("RequireClientCert", ClientAuth::RequireAnyClientCert),
        (
            "VerifyClientCertIfGiven",
            ClientAuth::VerifyClientCertIfGiven,
        ),
        (
            "RequireAndVerifyClientCert",
            ClientAuth::RequireAndVerifyClientCert,
        ),
    ] {
        let ca = if auth == ClientAuth::NoClientCert {
            ""
        } else {
            "  client_ca_file: ca.crt\n"
        };
        let config = parse(&format!(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: {name}\n{ca}"
        ))
        .unwrap();
        assert_eq!(config.tls.unwrap().client_auth, auth, "{name}");
    }
}

#[test]
fn unreadable_or_endless_certificate_files_are_one_line_errors() {
    let settings = |cert: &str, key: &str| TlsSettings {
        cert_file: cert.into(),
        key_file: key.into(),
        client_ca_file: None,
        client_auth: ClientAuth::NoClientCert,
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls13,
        cipher_suites: Vec::new(),
    };
    for (cert, key, named) in [
        ("/dev/zero", "/dev/null", "tls_server_config.cert_file"),
        (
            "/nonexistent.crt",
            "/dev/null",
            "tls_server_config.cert_file",
        ),
        ("/dev/null", "/dev/null", "tls_server_config.cert_file"),
    ] {
        let e = server_config(&settings(cert, key)).unwrap_err().to_string();
        assert!(e.starts_with(named) && e.contains(cert), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let e = WebConfig::read(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn the_flag_needs_the_endpoint() {
    use clap::Parser;
    let cli =
        crate::cli::Cli::try_parse_from(["synproxy-agent", "--web-config-file", "/w.yml"]).unwrap();
    assert_eq!(
        cli.validate().unwrap_err(),
        "--web-config-file /w.yml: needs --prometheus-listen"
    );
    let cli = crate::cli::Cli::try_parse_from([
        "synproxy-agent",
        "--web-config-file",
        "/w.yml",
        "--prometheus-listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    assert!(cli.validate().is_ok());
}

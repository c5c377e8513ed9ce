//! The rustls server configuration of a `tls_server_config`: certificate and
//! key, protocol versions, TLS 1.2 cipher suites, and the client certificate
//! policy (`client_auth_type` with `client_ca_file`).

use super::web_config::{ClientAuth, TlsSettings, TlsVersion, WebConfigError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls::{SignatureScheme, SupportedCipherSuite};
use std::sync::Arc;

/// Go's names (as in the toolkit's `cipher_suites`) of the TLS 1.2 suites
/// rustls has. TLS 1.3 suites are not configurable (as in Go).
const TLS12_SUITES: [(&str, SupportedCipherSuite); 7] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    // Go's older name of the same suite.
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// `Ok` when `name` is a suite the agent can offer.
pub(super) fn check_cipher_suite(name: &str) -> Result<(), String> {
    if TLS12_SUITES.iter().any(|(n, _)| *n == name) {
        Ok(())
    } else {
        Err(format!(
            "{name}: not a TLS 1.2 suite rustls offers (ECDHE with AES-GCM or CHACHA20-POLY1305)"
        ))
    }
}

fn file_error(
    key: &'static str,
    path: &std::path::Path,
    e: impl std::fmt::Display,
) -> WebConfigError {
    WebConfigError::File {
        key,
        problem: format!("{}: {e}", path.display()),
    }
}

/// The largest certificate, key or CA file read (a CA bundle is a few
/// hundred KiB; `/dev/zero` must not fill the memory).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// Reads `path`, at most [`MAX_PEM_BYTES`].
fn read_pem(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, WebConfigError> {
    use std::io::Read;
    // A FIFO would block the open, a device never end.
    let meta = std::fs::metadata(path).map_err(|e| file_error(key, path, e))?;
    if !meta.is_file() {
        return Err(file_error(key, path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| file_error(key, path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(key, path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(file_error(
            key,
            path,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads the files of `settings` and builds the server configuration.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, WebConfigError> {
    let pem = read_pem("tls_server_config.cert_file", &settings.cert_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("tls_server_config.cert_file", &settings.cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "tls_server_config.cert_file",
            &settings.cert_file,
            "no PEM certificate in it",
        ));
    }
    let pem = read_pem("tls_server_config.key_file", &settings.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error("tls_server_config.key_file", &settings.key_file, e))?;
    let mut provider = ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        provider.cipher_suites.retain(|suite| match suite {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => TLS12_SUITES.iter().any(|(name, s)| {
                s.suite() == suite.suite() && settings.cipher_suites.iter().any(|n| n == name)
            }),
        });
    }
    let provider = Arc::new(provider);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let verifier = client_verifier(settings, &provider)?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| WebConfigError::Key {
            key: "tls_server_config.cipher_suites",
            problem: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| WebConfigError::File {
            key: "tls_server_config.key_file",
            problem: format!("does not match cert_file: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    let algorithms = provider.signature_verification_algorithms;
    match settings.client_auth {
        ClientAuth::NoClientCert => Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => Ok(Arc::new(AnyClientCert {
            mandatory: false,
            algorithms,
        })),
        ClientAuth::RequireAnyClientCert => Ok(Arc::new(AnyClientCert {
            mandatory: true,
            algorithms,
        })),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let Some(path) = &settings.client_ca_file else {
                return Err(WebConfigError::Key {
                    key: "tls_server_config.client_ca_file",
                    problem: "missing".into(),
                });
            };
            let key = "tls_server_config.client_ca_file";
            let mut roots = RootCertStore::empty();
            let pem = read_pem(key, path)?;
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(key, path, e))?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(file_error(key, path, "no usable CA certificate in it"));
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
            let builder = if settings.client_auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| file_error(key, path, e))
        }
    }
}

/// `RequestClientCert` / `RequireAnyClientCert`: asks for a certificate and
/// checks only that the client holds its key (as Go's `tls` does).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

//! `--web-config-file` against the real tools: `promtool check web-config`
//! accepts every file the agent accepts (and both refuse the invalid ones),
//! Debian's Prometheus scrapes the agent over HTTPS with a CA file and basic
//! auth (and with a client certificate under `RequireAndVerifyClientCert`)
//! with `up` 1, a wrong password gets 401 and a client without a certificate
//! is refused; the file is re-read when it changes, and an invalid new
//! version leaves the old one in force with one warning. Certificates by
//! `openssl`, bcrypt hashes by `htpasswd` (apache2-utils), requests by `curl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use synproxy_tests::harness::{wait_until, Needs};
use synproxy_tests::metrics_agent::{MetricsAgent, Started};
use synproxy_tests::prometheus::PrometheusServer;
use synproxy_tests::require;

const PASSWORD: &str = "scrape-s3cret";

fn needs() -> Needs {
    Needs {
        what: "the web configuration tests",
        root: true,
        synproxy: true,
        programs: &["openssl", "htpasswd", "curl", "promtool", "prometheus"],
    }
}

/// A directory with a CA, a server certificate for 127.0.0.1 and a client
/// certificate, removed on drop.
struct Pki {
    dir: PathBuf,
}

fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("spx-web-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=synproxy-test-ca",
            "-days",
            "2",
        ]);
        run("openssl", &ca, &dir);
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={name}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &crt,
                "-subj",
                &subj,
                "-days",
                "2",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-addext",
                ext,
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ]);
            run("openssl", &args, &dir);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Writes `text` as `name` in the directory; its path.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path.display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bcrypt hash of `password` by htpasswd (cost 10, as the toolkit's docs).
fn bcrypt_hash(password: &str) -> String {
    let out = run("htpasswd", &["-nbBC", "10", "", password], Path::new("/"));
    out.trim().trim_start_matches(':').to_string()
}

fn promtool_accepts(file: &str) -> (bool, String) {
    let out = Command::new("promtool")
        .args(["check", "web-config", file])
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn agent_with(file: &str) -> Started {
    MetricsAgent::start(&["--no-ebpf", "--interval", "1s", "--web-config-file", file])
}

/// `curl` status code of `https://addr/metrics` with `args`; 0 when the TLS
/// connection failed.
fn curl(url: &str, args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn promtool_accepts_the_files_the_agent_accepts() {
    require!(needs().check());
    let pki = Pki::new("files");
    let hash = bcrypt_hash(PASSWORD);
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let valid = [
        tls.to_string(),
        format!("basic_auth_users:\n  prometheus: {hash}\n"),
        format!("{tls}  min_version: TLS13\nbasic_auth_users:\n  prometheus: {hash}\n  other: {hash}\n"),
        format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"),
        format!("{tls}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"),
        format!("{tls}  client_auth_type: RequireAnyClientCert\n"),
        format!("{tls}  client_auth_type: RequestClientCert\n"),
        format!("{tls}  min_version: TLS12\n  max_version: TLS13\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n  prefer_server_cipher_suites: true\nhttp_server_config:\n  http2: false\n"),
    ];
    for (i, text) in valid.iter().enumerate() {
        let file = pki.write(&format!("valid{i}.yml"), text);
        let (ok, report) = promtool_accepts(&file);
        assert!(
            ok,
            "promtool refuses a file the agent should accept:\n{text}\n{report}"
        );
        match agent_with(&file) {
            Started::Serving(_) => {}
            Started::Exited(code, log) => panic!("the agent refused ({code:?}):\n{text}\n{log}"),
        }
    }
    // Refused by both; the agent's one line names the key.
    let invalid = [
        (format!("{tls}  foo: 1\n"), "foo"),
        (
            "basic_auth_users:\n  prometheus: not-a-hash\n".to_string(),
            "basic_auth_users",
        ),
        (
            format!("{tls}  client_auth_type: Sometimes\n"),
            "client_auth_type",
        ),
        (format!("{tls}  client_ca_file: ca.crt\n"), "client_ca_file"),
        (
            "tls_server_config:\n  cert_file: server.crt\n".to_string(),
            "key_file",
        ),
        (format!("{tls}  min_version: TLS14\n"), "min_version"),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".to_string(),
            "cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.key\n".to_string(),
            "key_file",
        ),
    ];
    for (i, (text, key)) in invalid.iter().enumerate() {
        let file = pki.write(&format!("invalid{i}.yml"), text);
        let (ok, report) = promtool_accepts(&file);
        assert!(
            !ok,
            "promtool accepts what the agent refuses:\n{text}\n{report}"
        );
        match agent_with(&file) {
            Started::Serving(_) => panic!("the agent accepts:\n{text}"),
            Started::Exited(code, log) => {
                assert_eq!(code, Some(2), "{text}\n{log}");
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
                assert_eq!(errors.len(), 1, "{log}");
                assert!(
                    errors[0].contains("--web-config-file") && errors[0].contains(key),
                    "the error does not name {key}: {log}"
                );
            }
        }
    }
}

#[test]
fn prometheus_scrapes_over_https_with_basic_auth_and_client_certificates() {
    require!(needs().check());
    let pki = Pki::new("scrape");
    let hash = bcrypt_hash(PASSWORD);
    let auth_file = pki.write(
        "auth.yml",
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"),
    );
    let mtls_file = pki.write(
        "mtls.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let auth = MetricsAgent::serving(&[
        "--no-ebpf",
        "--interval",
        "1s",
        "--web-config-file",
        &auth_file,
    ]);
    let mtls = MetricsAgent::serving(&[
        "--no-ebpf",
        "--interval",
        "1s",
        "--web-config-file",
        &mtls_file,
    ]);
    let ca = pki.path("ca.crt");
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let job = |name: &str, target: &str, extra: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n{extra}    static_configs:\n      - targets: ['{target}']\n"
        )
    };
    let jobs = [
        job("https-auth", &auth.addr, &format!("    basic_auth:\n      username: prometheus\n      password: {PASSWORD}\n")),
        job("wrong-password", &auth.addr, "    basic_auth:\n      username: prometheus\n      password: wrong\n"),
        job("client-cert", &mtls.addr, &format!("    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n")),
        job("no-client-cert", &mtls.addr, ""),
    ];
    // The client-cert job's tls_config replaces the generic one.
    let jobs: Vec<String> = jobs
        .iter()
        .map(|j| match j.matches("tls_config:").count() {
            2 => j.replacen(&format!("    tls_config:\n      ca_file: {ca}\n"), "", 1),
            _ => j.clone(),
        })
        .collect();
    let server = PrometheusServer::start_with(&jobs.concat()).unwrap_or_else(|e| panic!("{e:#}"));
    let up = |job: &str| -> Result<f64, String> {
        let series = server
            .query(&format!("up{{job=\"{job}\"}}"))
            .map_err(|e| e.to_string())?;
        series
            .first()
            .map(|s| s.value)
            .ok_or_else(|| "no up series yet".to_string())
    };
    for job in ["https-auth", "client-cert"] {
        wait_until(
            &format!("up{{job={job}}} == 1"),
            Duration::from_secs(60),
            || {
                let v = up(job)?;
                if v == 1.0 {
                    Ok(())
                } else {
                    Err(format!("up = {v}; last errors {:?}", server.last_errors()))
                }
            },
        );
    }
    let errors = wait_until(
        "the failing jobs' scrape errors",
        Duration::from_secs(60),
        || {
            let errors = server.last_errors().map_err(|e| e.to_string())?;
            let wrong = errors.get("wrong-password").cloned().unwrap_or_default();
            let no_cert = errors.get("no-client-cert").cloned().unwrap_or_default();
            if wrong.is_empty() || no_cert.is_empty() {
                return Err(format!("{errors:?}"));
            }
            Ok((wrong, no_cert))
        },
    );
    assert!(errors.0.contains("401"), "wrong password: {}", errors.0);
    assert_eq!(up("wrong-password"), Ok(0.0));
    assert_eq!(up("no-client-cert"), Ok(0.0));
    assert!(
        errors.1.contains("certificate") || errors.1.contains("tls"),
        "without a client certificate: {}",
        errors.1
    );

    // The same with curl, and the 401's challenge.
    let url = |addr: &str| format!("https://{addr}/metrics");
    let with_password = format!("prometheus:{PASSWORD}");
    assert_eq!(
        curl(&url(&auth.addr), &["--cacert", &ca, "-u", &with_password]),
        200
    );
    assert_eq!(
        curl(
            &url(&auth.addr),
            &["--cacert", &ca, "-u", "prometheus:wrong"]
        ),
        401
    );
    assert_eq!(curl(&url(&auth.addr), &["--cacert", &ca]), 401);
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            &url(&auth.addr),
        ])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("www-authenticate: basic"), "{head}");
    // Plain HTTP to a TLS endpoint is not served.
    assert_ne!(curl(&format!("http://{}/metrics", auth.addr), &[]), 200);
    assert_eq!(curl(&url(&mtls.addr), &["--cacert", &ca]), 0);
    assert_eq!(
        curl(
            &url(&mtls.addr),
            &["--cacert", &ca, "--cert", &cert, "--key", &key]
        ),
        200
    );
}

#[test]
fn the_file_is_re_read_and_a_bad_version_keeps_the_old_one() {
    require!(needs().check());
    let pki = Pki::new("reload");
    let file = pki.write(
        "web.yml",
        &format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash(PASSWORD)
        ),
    );
    let agent =
        MetricsAgent::serving(&["--no-ebpf", "--interval", "1s", "--web-config-file", &file]);
    let url = format!("http://{}/metrics", agent.addr);
    let old = format!("prometheus:{PASSWORD}");
    assert_eq!(curl(&url, &["-u", &old]), 200);
    assert_eq!(curl(&url, &[]), 401);

    // A new password: the old one stops working, the new one works.
    pki.write(
        "web.yml",
        &format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash("new-s3cret")
        ),
    );
    wait_until("the new password", Duration::from_secs(30), || {
        match curl(&url, &["-u", "prometheus:new-s3cret"]) {
            200 => Ok(()),
            code => Err(format!("{code}")),
        }
    });
    assert_eq!(curl(&url, &["-u", &old]), 401);

    // An invalid version: one warning, the previous configuration stays.
    pki.write("web.yml", "basic_auth_users:\n  prometheus: not-a-hash\n");
    // Requests go on with the old configuration while the agent waits for
    // the file to settle, then reads it, warns, and keeps the old one.
    wait_until("the reload warning", Duration::from_secs(30), || {
        assert_eq!(curl(&url, &["-u", "prometheus:new-s3cret"]), 200);
        let log = agent.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("keeping the previous configuration"))
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            Err(log)
        } else {
            Ok(lines)
        }
    });
    for _ in 0..5 {
        assert_eq!(curl(&url, &["-u", "prometheus:new-s3cret"]), 200);
    }
    let warnings: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| l.contains("keeping the previous configuration"))
        .map(str::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("basic_auth_users"),
        "{warnings:?}"
    );

    // TLS switched on by the file: the endpoint answers HTTPS only.
    pki.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let https = format!("https://{}/metrics", agent.addr);
    let ca = pki.path("ca.crt");
    wait_until(
        "HTTPS after the reload",
        Duration::from_secs(30),
        || match curl(&https, &["--cacert", &ca]) {
            200 => Ok(()),
            code => Err(format!("{code}")),
        },
    );
}

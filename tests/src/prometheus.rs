//! A throwaway Prometheus server (Debian package `prometheus`) for the tests:
//! its own config, data directory and loopback port, scraping the given
//! targets every second; its HTTP query API; and a plain HTTP GET helper.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The scrape job name (the alerting rules assume it).
pub const JOB: &str = "synproxy-agent";

pub use crate::http_client::encode;

/// `GET path` on `addr` (HTTP/1.0: no chunked bodies), with an optional
/// `Accept`: (status code, headers, body).
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> Result<(u16, String, String)> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
    let answer =
        crate::http_client::exchange(addr, path, request.as_bytes(), Duration::from_secs(30))?;
    Ok((answer.status, answer.head, answer.body))
}

/// A JSON object's string values by key (labels, tags); empty if `value`
/// is no object, and a value that is no string as "".
pub fn string_map(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One series of an instant query: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl PrometheusServer {
    /// Starts `prometheus` scraping `targets` (`host:port`) every second as
    /// job [`JOB`], and waits until it is ready.
    pub fn start(targets: &[String]) -> Result<Self> {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let scrape_configs = format!(
            "  - job_name: '{JOB}'\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        Self::start_with(&scrape_configs)
    }

    /// Starts `prometheus` with these `scrape_configs` entries (YAML list
    /// items indented by two spaces), every job scraped every second, and
    /// waits until it is ready.
    pub fn start_with(scrape_configs: &str) -> Result<Self> {
        Self::start_under(scrape_configs, &[])
    }

    /// [`Self::start_with`], `prometheus` run through `wrapper` (a program and
    /// its arguments, e.g. `nsenter` into a mount namespace).
    pub fn start_under(scrape_configs: &str, wrapper: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "spx-prometheus-{}-{}",
            std::process::id(),
            crate::netns::next_seq()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        // A free loopback port (bound and released: the server takes it next).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("prometheus");
                c
            }
            None => Command::new("prometheus"),
        };
        let child = command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start prometheus (apt-get install prometheus)")?;
        let mut server = Self { child, dir, addr };
        server.wait_ready(Duration::from_secs(120))?;
        Ok(server)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if matches!(http_get(&self.addr, "/-/ready", None), Ok((200, _, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout waiting for prometheus to be ready on {} ({timeout:?}):\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last scrape error of each active target, by job (`""` when the
    /// last scrape worked), from `GET /api/v1/targets`.
    pub fn last_errors(&self) -> Result<BTreeMap<String, String>> {
        let (status, _, body) = http_get(&self.addr, "/api/v1/targets", None)?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("targets: not JSON ({status}): {body}"))?;
        let Some(targets) = json["data"]["activeTargets"].as_array() else {
            bail!("targets: no activeTargets: {body}");
        };
        Ok(targets
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// An instant query through `GET /api/v1/query`.
    pub fn query(&self, expr: &str) -> Result<Vec<Series>> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let (status, _, body) = http_get(&self.addr, &path, None)?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("query {expr}: not JSON ({status}): {body}"))?;
        if json["status"] != "success" {
            bail!("query {expr}: {body}");
        }
        let Some(result) = json["data"]["result"].as_array() else {
            bail!("query {expr}: no result vector: {body}");
        };
        let mut out = Vec::new();
        for item in result {
            let labels = string_map(&item["metric"]);
            let value = item["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("query {expr}: bad value in {item}"))?;
            out.push(Series { labels, value });
        }
        Ok(out)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        crate::child::stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

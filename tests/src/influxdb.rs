//! InfluxDB for the tests: a throwaway `influxd` (Debian package `influxdb`,
//! 1.x) with its own config, data directory and loopback ports, that can be
//! killed and started again on the same port and data; its `/query` API; and
//! a scripted HTTP endpoint standing in for an InfluxDB 2.x `/api/v2/write`
//! (no 2.x server is packaged in Debian), recording what the agent sends.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::http_client::encode;
use crate::http_client::free_port;
use crate::influxd_setup;

/// An HTTP/1.1 request with `Connection: close`: (status, head, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String, String)> {
    let answer = crate::http_client::request(addr, method, path, body, Duration::from_secs(30))?;
    Ok((answer.status, answer.head, answer.body))
}

/// One series of a query answer: its tags and rows (column name -> value).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub rows: Vec<BTreeMap<String, serde_json::Value>>,
}

pub struct InfluxServer {
    child: Option<Child>,
    dir: PathBuf,
    addr: String,
    starts: u32,
}

impl InfluxServer {
    /// Starts `influxd` on a free loopback port with its data in a new temp
    /// directory, and waits until `/ping` answers.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "spx-influxd-{}-{}",
            std::process::id(),
            crate::netns::next_seq()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let http_port = free_port()?;
        // The backup/restore RPC service needs a port too: never the
        // packaged service's 8088.
        let rpc_port = free_port()?;
        let addr = format!("127.0.0.1:{http_port}");
        influxd_setup::write_config(&dir, &addr, &format!("127.0.0.1:{rpc_port}"))?;
        let mut server = Self {
            child: None,
            dir,
            addr,
            starts: 0,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let child = influxd_setup::command(&self.dir, &self.dir.join("influxd.log"))?
            .spawn()
            .context(influxd_setup::NOT_INSTALLED)?;
        let child = self.child.insert(child);
        influxd_setup::wait_ready(child, &self.addr, Duration::from_secs(120))
            .map_err(|e| anyhow::anyhow!("{e}:\n{}", self.log()))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's own log so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("influxd.log")).unwrap_or_default()
    }

    /// Stops the server with `signal` (SIGKILL: as in a crash) and waits
    /// until it is gone.
    pub fn stop(&mut self, signal: i32) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("timeout waiting for influxd to exit after signal {signal} (60s)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts it again: same config, port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// A statement through `POST /query` (CREATE, DROP ...).
    pub fn execute(&self, statement: &str) -> Result<serde_json::Value> {
        let body = format!("q={}", encode(statement));
        let (status, _, text) = http_request(&self.addr, "POST", "/query", body.as_bytes())?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{statement}: not JSON ({status}): {text}"))?;
        if status != 200 || json["results"][0].get("error").is_some() {
            bail!("{statement}: {status} {text}");
        }
        Ok(json)
    }

    /// A query in `db` through `GET /query` (nanosecond timestamps); the
    /// series of its first statement.
    pub fn query(&self, db: &str, query: &str) -> Result<Vec<Series>> {
        let path = format!("/query?db={}&epoch=ns&q={}", encode(db), encode(query));
        let (status, _, text) = http_request(&self.addr, "GET", &path, b"")?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{query}: not JSON ({status}): {text}"))?;
        let result = &json["results"][0];
        if status != 200 || result.get("error").is_some() {
            bail!("{query}: {status} {text}");
        }
        let mut out = Vec::new();
        for series in result["series"].as_array().into_iter().flatten() {
            let columns: Vec<String> = series["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect();
            let tags = crate::prometheus::string_map(&series["tags"]);
            let rows = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| {
                    columns
                        .iter()
                        .cloned()
                        .zip(row.as_array().into_iter().flatten().cloned())
                        .collect()
                })
                .collect();
            out.push(Series {
                name: series["name"].as_str().unwrap_or_default().to_string(),
                tags,
                rows,
            });
        }
        Ok(out)
    }
}

impl Drop for InfluxServer {
    fn drop(&mut self) {
        let _ = self.stop(libc::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the scripted endpoint received in one request.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The body as sent (gzip, if the agent compressed it).
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
    pub at: Instant,
}

/// An answer: status, extra headers, body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }
}

/// A tiny HTTP server on a loopback port: answers requests with the scripted
/// replies in order (then 204), one request per connection, and records them.
pub struct ScriptedEndpoint {
    addr: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptedEndpoint {
    pub fn start(script: Vec<Reply>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let mut script: VecDeque<Reply> = script.into();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let reply = script.pop_front().unwrap_or_else(|| Reply::new(204));
                if let Err(e) = serve_one(stream, &reply, &log) {
                    eprintln!("scripted endpoint: {e:#}");
                }
            }
        });
        Ok(Self { addr, received })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits (generously) until at least `n` requests came; panics if not.
    pub fn wait_for_requests(&self, n: usize) {
        crate::harness::wait_until(
            &format!("{n} requests at the endpoint"),
            Duration::from_secs(120),
            || match self.received().len() {
                got if got >= n => Ok(()),
                got => Err(format!("{got} requests")),
            },
        );
    }
}

/// Reads one request, records it, then answers it: recorded before the
/// agent can see the answer (and maybe exit), so a test that waited for the
/// agent finds every request it made.
fn serve_one(stream: TcpStream, reply: &Reply, log: &Mutex<Vec<Received>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .context("no Content-Length")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if let Ok(mut log) = log.lock() {
        log.push(Received {
            method,
            target,
            headers,
            body,
            status: reply.status,
            at: Instant::now(),
        });
    }
    let reason = match reply.status {
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let mut stream = stream;
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    Ok(())
}

/// Decompresses a gzip body.
pub fn gunzip(body: &[u8]) -> Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .context("not gzip, or not UTF-8 inside")?;
    Ok(text)
}

/// `influxd` in PATH (Debian's `influxdb`).
pub const NEEDS: crate::harness::Needs = crate::harness::Needs {
    what: "InfluxDB tests (apt-get install influxdb; cargo xtask test installs it)",
    root: false,
    programs: &["influxd"],
    synproxy: false,
};

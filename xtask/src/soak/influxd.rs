//! A throwaway InfluxDB 1.x (`influxd` from Debian's `influxdb` package) on
//! free loopback ports, with its own config and data directory, that can be
//! killed and started again on the same port and data.

use super::http;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a (re)start may take to answer `/ping` on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Influxd {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    addr: String,
}

impl Influxd {
    /// Starts it with its data in `dir/influxd` and its log in `log`.
    pub fn start(dir: &std::path::Path, log: PathBuf) -> Result<Self> {
        let dir = dir.join("influxd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let addr = format!("127.0.0.1:{}", http::free_port()?);
        // The backup/restore RPC service needs a port too: never the
        // packaged service's 8088.
        let rpc = format!("127.0.0.1:{}", http::free_port()?);
        let d = dir.display();
        let config = format!(
            "reporting-disabled = true\n\
             bind-address = \"{rpc}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"{addr}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n"
        );
        std::fs::write(dir.join("influxdb.conf"), config)?;
        let mut server = Self {
            child: None,
            dir,
            log,
            addr,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts the process (again) and waits until `/ping` answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("influxd")
            .arg("-config")
            .arg(self.dir.join("influxdb.conf"))
            .env_remove("INFLUXDB_CONFIG_PATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Ctrl-C reaches the xtask only: it stops its children itself.
            .process_group(0)
            .spawn()
            .context("cannot start influxd (apt-get install influxdb)")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "influxd exited ({status}) before it answered on {} (log: {})",
                        self.addr,
                        self.log.display()
                    );
                }
            }
            if matches!(http::request(&self.addr, "GET", "/ping", ""), Ok((204, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "influxd did not answer /ping on {} within {READY_TIMEOUT:?} (log: {})",
                    self.addr,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A statement through `POST /query` (CREATE DATABASE ...); the answer.
    pub fn execute(&self, statement: &str) -> Result<String> {
        let body = format!("q={}", http::encode(statement));
        let (status, text) = http::request(&self.addr, "POST", "/query", &body)?;
        if status != 200 || text.contains("\"error\"") {
            bail!("{statement}: {status} {text}");
        }
        Ok(text)
    }

    /// SIGKILL, as in a crash, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

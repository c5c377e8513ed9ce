//! A throwaway InfluxDB 1.x (`influxd` from Debian's `influxdb` package) on
//! free loopback ports, with its own config and data directory, that can be
//! killed and started again on the same port and data.

use super::{http, influxd_setup};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

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
        influxd_setup::write_config(&dir, &addr, &rpc)?;
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
        let child = influxd_setup::command(&self.dir, &self.log)?
            // Ctrl-C reaches the xtask only: it stops its children itself.
            .process_group(0)
            .spawn()
            .context(influxd_setup::NOT_INSTALLED)?;
        let child = self.child.insert(child);
        if let Err(e) = influxd_setup::wait_ready(child, &self.addr, READY_TIMEOUT) {
            self.kill();
            bail!("{e} (log: {})", self.log.display());
        }
        Ok(())
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

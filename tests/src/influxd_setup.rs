//! A throwaway InfluxDB 1.x (`influxd` from Debian's `influxdb` package): its
//! config, its command and the wait for `/ping`. Shared by the tests crate
//! and xtask's soak, which compiles this file into itself beside
//! `http_client.rs` (so std, anyhow and `super::http_client` only).

use super::http_client;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `dir/influxdb.conf`: data below `dir`, HTTP on `addr`, the
/// backup/restore RPC service on `rpc` (never the packaged service's 8088),
/// no reporting, monitor or continuous queries.
pub fn write_config(dir: &Path, addr: &str, rpc: &str) -> Result<()> {
    let d = dir.display();
    let config = format!(
        "reporting-disabled = true\n\
         bind-address = \"{rpc}\"\n\
         [meta]\n  dir = \"{d}/meta\"\n\
         [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
         [http]\n  bind-address = \"{addr}\"\n  log-enabled = false\n  max-row-limit = 0\n\
         [monitor]\n  store-enabled = false\n\
         [continuous_queries]\n  enabled = false\n"
    );
    let path = dir.join("influxdb.conf");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
}

/// `influxd` on the config [`write_config`] wrote in `dir`, its output
/// appended to `log`; not yet spawned.
pub fn command(dir: &Path, log: &Path) -> Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new("influxd");
    command
        .arg("-config")
        .arg(dir.join("influxdb.conf"))
        .env_remove("INFLUXDB_CONFIG_PATH")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(command)
}

/// The error when `influxd` cannot be spawned.
pub const NOT_INSTALLED: &str = "cannot start influxd (apt-get install influxdb)";

/// Polls `/ping` on `addr` until it answers 204; fails when `child` exits
/// first or `timeout` passes (the caller adds the log and stops the child).
pub fn wait_ready(child: &mut Child, addr: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("influxd exited ({status}) before it answered /ping on {addr}");
        }
        let ping = http_client::request(addr, "GET", "/ping", b"", Duration::from_secs(5));
        if matches!(ping, Ok(ref answer) if answer.status == 204) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("influxd did not answer /ping on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

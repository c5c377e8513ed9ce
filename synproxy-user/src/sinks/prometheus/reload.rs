//! The web configuration in force, re-read when its file or a file it names
//! changes (checked with `stat` when a connection is accepted and before a
//! request is authenticated, as the exporter-toolkit re-reads per request).
//! A file that became invalid leaves the previous configuration in force,
//! with one warning until it changes again. A change is loaded once the
//! files have not changed for [`SETTLE`]: an editor that truncates and then
//! writes must not get its empty intermediate file (no users: open access)
//! loaded.

use super::auth::Users;
use super::tls::server_config;
use super::web_config::{WebConfig, WebConfigError};
use log::{info, warn};
use rustls::ServerConfig;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the files must be unchanged before a change is loaded.
const SETTLE: Duration = Duration::from_secs(1);

/// What a connection and its requests are served with.
#[derive(Debug)]
pub struct Active {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    pub users: Arc<Users>,
}

/// Identity and version of a file as `stat` sees it (`None`: missing).
type Stamp = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

#[derive(Debug)]
struct State {
    active: Arc<Active>,
    /// The configuration file, then the files it names.
    files: Vec<PathBuf>,
    stamp: Stamp,
    /// The stamp of a failed reload (warned about once).
    failed: Option<Stamp>,
}

/// `--web-config-file`, loaded.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    state: Mutex<State>,
}

/// Whether a file of `stamp` was modified or changed less than [`SETTLE`] ago.
fn settling(stamp: &Stamp) -> bool {
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return false;
    };
    stamp
        .iter()
        .flatten()
        .any(|&(_, _, _, mtime, mtime_ns, ctime, ctime_ns)| {
            [(mtime, mtime_ns), (ctime, ctime_ns)]
                .iter()
                .any(|&(s, ns)| {
                    let (Ok(s), Ok(ns)) = (u64::try_from(s), u32::try_from(ns)) else {
                        return false;
                    };
                    let at = Duration::new(s, ns.min(999_999_999));
                    now.abs_diff(at) < SETTLE
                })
        })
}

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// Reads `path` and the files it names: what to serve, and the files to watch.
fn load(path: &Path) -> Result<(Active, Vec<PathBuf>), WebConfigError> {
    let config = WebConfig::read(path)?;
    let mut files = vec![path.to_path_buf()];
    let tls = match &config.tls {
        Some(settings) => {
            files.push(settings.cert_file.clone());
            files.push(settings.key_file.clone());
            files.extend(settings.client_ca_file.clone());
            Some(server_config(settings)?)
        }
        None => None,
    };
    let users = Arc::new(Users::new(config.users));
    Ok((Active { tls, users }, files))
}

impl Watched {
    /// Loads `path` at start-up; the error is one line naming the flag, the
    /// file and the key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let files_before = vec![path.to_path_buf()];
        let before = stamp(&files_before);
        let (active, files) =
            load(path).map_err(|e| format!("--web-config-file {}: {e}", path.display()))?;
        // The stamp of the files as read (the configuration file's from before
        // reading it: a change while reading is seen next time).
        let mut now = stamp(&files);
        now[0] = before[0];
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                active: Arc::new(active),
                files,
                stamp: now,
                failed: None,
            }),
        })
    }

    /// Whether TLS is on now.
    pub fn tls(&self) -> bool {
        self.current().tls.is_some()
    }

    /// The configuration in force, re-read first if a file changed.
    pub fn current(&self) -> Arc<Active> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&state.files);
        if now == state.stamp || state.failed.as_ref() == Some(&now) || settling(&now) {
            return Arc::clone(&state.active);
        }
        match load(&self.path) {
            Ok((active, files)) => {
                let mut stamp_now = stamp(&files);
                stamp_now[0] = now[0];
                info!(
                    "--web-config-file {}: reloaded (TLS {}, {} basic auth users)",
                    self.path.display(),
                    if active.tls.is_some() { "on" } else { "off" },
                    active.users.len()
                );
                state.active = Arc::new(active);
                state.files = files;
                state.stamp = stamp_now;
                state.failed = None;
            }
            Err(e) => {
                warn!(
                    "--web-config-file {}: {e}; keeping the previous configuration",
                    self.path.display()
                );
                state.failed = Some(now);
            }
        }
        Arc::clone(&state.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_file(dir: &Path, users: &[&str]) -> PathBuf {
        let hash = "$2y$10$JkSnyRmOF2I7stXtJPDdLussQCQNgeJ2V4n9YmJvhbp53oMjleLJG";
        let mut text = String::from("basic_auth_users:\n");
        for user in users {
            text.push_str(&format!("  {user}: '{hash}'\n"));
        }
        let path = dir.join("web.yml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_change_is_loaded_once_settled_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_file(dir.path(), &["a"]);
        let watched = Watched::load(&path).unwrap();
        assert_eq!(watched.current().users.len(), 1);

        // Just written (an editor may still be writing): not loaded yet.
        users_file(dir.path(), &["a", "b"]);
        assert_eq!(watched.current().users.len(), 1);
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        assert_eq!(watched.current().users.len(), 2);

        // Invalid: the previous configuration stays.
        std::fs::write(&path, "basic_auth_users:\n  a: nohash\n").unwrap();
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        assert_eq!(watched.current().users.len(), 2);
        assert!(watched.state.lock().unwrap().failed.is_some());
        // Fixed: loaded.
        users_file(dir.path(), &["c"]);
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        assert_eq!(watched.current().users.len(), 1);
        assert!(watched.state.lock().unwrap().failed.is_none());
    }
}

//! The detectors' state file (`--state-dir`): read once at start, written
//! at most every [`SAVE_EVERY`], at each attack's start and end, and at
//! shutdown (to a temporary file renamed over the old one, so a crash
//! leaves the old or the new file, never half of one). A namespace gets its
//! saved state back when it is first read under the same label.

use super::*;
use crate::analysis::attack::detector::NamespaceDetector;
use crate::analysis::attack::state_file::{self, STATE_FILE, STATE_FILE_CAP};
use crate::analysis::attack::subject::Params as AttackParams;
use crate::sources::proc::host_file::{self, HostFileError};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;

/// Longest time between two writes of the state file.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The state file's path, what it brought back not yet claimed, and when it
/// was last written.
#[derive(Debug, Default)]
pub(crate) struct AttackState {
    path: Option<PathBuf>,
    pending: HashMap<Option<String>, NamespaceDetector>,
    last_save: Option<Instant>,
    /// An attack started or ended since the last write.
    dirty: bool,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl AttackState {
    /// Reads the state file in `dir`, if any; problems are one line each.
    pub(crate) fn load(dir: Option<&std::path::Path>, params: &AttackParams) -> Self {
        let Some(dir) = dir else {
            return Self::default();
        };
        let path = dir.join(STATE_FILE);
        let mut state = Self {
            path: Some(path.clone()),
            ..Self::default()
        };
        match host_file::read_regular(&path, STATE_FILE_CAP) {
            Ok(bytes) => match state_file::decode(&bytes, params) {
                Ok(namespaces) => {
                    let attacks: usize = namespaces.iter().map(|(_, d)| d.active().count()).sum();
                    info!(
                        "attack state: {} namespaces and {attacks} attacks in progress read from {}",
                        namespaces.len(),
                        path.display()
                    );
                    state.pending = namespaces.into_iter().collect();
                }
                Err(e) => warn!("attack state: {}: {e}; starting afresh", path.display()),
            },
            Err(HostFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!("attack state: no {} yet", path.display());
            }
            Err(e) => warn!("attack state: {}: {e}; starting afresh", path.display()),
        }
        state
    }

    /// The saved detector of the namespace labelled `label`, once.
    pub fn claim(&mut self, label: Option<&str>) -> Option<NamespaceDetector> {
        self.pending.remove(&label.map(str::to_string))
    }

    /// What the file brought back that no namespace claimed yet.
    pub fn unclaimed(&self) -> impl Iterator<Item = (Option<&str>, &NamespaceDetector)> {
        self.pending.iter().map(|(label, d)| (label.as_deref(), d))
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a write is due (`force`: at shutdown).
    pub fn due(&self, force: bool) -> bool {
        self.path.is_some()
            && (force || self.dirty || self.last_save.is_none_or(|t| t.elapsed() >= SAVE_EVERY))
    }

    /// Writes `bytes` as the state file.
    pub fn save(&mut self, bytes: &[u8]) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.last_save = Some(Instant::now());
        self.dirty = false;
        match write_atomically(&path, bytes) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    info!("attack state: {} written again", path.display());
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(
                        "attack state: cannot write {}: {e}; baselines will be relearnt after a restart",
                        path.display()
                    );
                }
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Sampler {
    /// Writes the state file if due (`force`: at shutdown).
    pub(super) fn save_attack_state(&mut self, force: bool) {
        if !self.attack_state.due(force) {
            return;
        }
        // --once learns nothing worth keeping.
        if self.config.once {
            return;
        }
        let own = SeriesKey::Own;
        // Saved states not claimed yet (namespaces not seen again so far)
        // are kept too.
        let bytes = state_file::encode(
            now_ns(),
            self.series
                .iter()
                .map(|(key, s)| {
                    let label = (*key != own).then_some(s.label.as_str());
                    (label, &s.attacks.detector)
                })
                .chain(self.attack_state.unclaimed()),
        );
        self.attack_state.save(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_garbage_in_place_of_the_file_is_one_line_and_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let state = AttackState::load(Some(dir.path()), &AttackParams::default());
        assert!(state.pending.is_empty());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"\x00garbage").unwrap();
        let state = AttackState::load(Some(dir.path()), &AttackParams::default());
        assert!(state.pending.is_empty());
    }

    #[test]
    fn saves_are_atomic_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = AttackState::load(Some(dir.path()), &AttackParams::default());
        assert!(state.due(false));
        let d = NamespaceDetector {
            learnt_secs: 7.0,
            ..NamespaceDetector::default()
        };
        state.save(&state_file::encode(1, [(Some("blue"), &d)].into_iter()));
        assert!(!state.due(false));
        assert!(state.due(true));
        let mut back = AttackState::load(Some(dir.path()), &AttackParams::default());
        assert_eq!(back.claim(Some("blue")).map(|d| d.learnt_secs), Some(7.0));
        assert!(back.claim(Some("blue")).is_none(), "claimed once");
        assert_eq!(back.unclaimed().count(), 0);
        // Namespaces not seen again are written back as they were.
        state.save(&state_file::encode(
            2,
            [(Some("blue"), &d), (Some("red"), &d)].into_iter(),
        ));
        let mut back = AttackState::load(Some(dir.path()), &AttackParams::default());
        assert!(back.claim(Some("blue")).is_some());
        let left: Vec<Option<&str>> = back.unclaimed().map(|(l, _)| l).collect();
        assert_eq!(left, [Some("red")]);
        assert!(!dir.path().join("attacks.json.tmp").exists());
    }
}

//! Reads `/proc/net/stat/synproxy` (I/O around the pure [`super::proc_stat`]
//! parser): every error names the path it came from.
//!
//! On procfs the file is kept open between rounds and re-read from offset 0
//! ([`KeptStat`]): the kernel's seq_file generates it afresh on every read
//! from 0, so one `pread` replaces open, stat, read and close. A kept file
//! cannot go silently stale: when its proc entry is removed (the module is
//! unloaded, its namespace destroyed) the kernel runs the entry down and every
//! later read of the open file fails with `EIO`. That failure (or `ENOENT`,
//! `ENODEV`, or zero bytes from offset 0) means the counters behind the file
//! were destroyed: the file is opened again and the reading is marked
//! [`Reading::recreated`], so the wrap tracker starts a new baseline even if
//! the new entry got the old inode number back (the kernel reuses them at
//! once). Files elsewhere than on procfs (a `--proc-root` tree of plain
//! files) are opened anew each round, as before, since a plain file can be
//! replaced under its name without the open one noticing.
//!
//! Whoever controls `--proc-root` controls what is found there: the file is
//! opened without blocking and must be a regular file, not a symbolic link
//! (see [`super::host_file`]), and at most [`STAT_CAP`] bytes are read. A
//! wrong file is one error naming the path and what it is, logged once and
//! retried each round like a missing one.

use super::host_file::{self, HostFileError};
use super::proc_stat::{self, ParseError, ProcStat};
use crate::reconcile::wrap_tracker::CounterIdentity;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Relative to the proc root, as Telegraf reads it.
pub const STAT_FILE: &str = "net/stat/synproxy";

/// Most bytes read from a stat file: a row is 54 bytes per CPU, so the
/// kernel's largest configuration (8,192 CPUs) writes about 450 KiB.
pub const STAT_CAP: usize = 1 << 20;

#[derive(Debug)]
pub struct Reading {
    pub identity: CounterIdentity,
    pub stat: ProcStat,
    /// The kept-open file went stale since the last read (its proc entry was
    /// removed, so its counters were destroyed) and was opened again: these
    /// are new counters, whatever their identity and values say.
    pub recreated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: file not found (nf_synproxy_core may not be loaded in this network namespace)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
    /// Not a file the agent reads (a FIFO, a device, a link, too large).
    #[error("{}: {reason}", path.display())]
    Refused {
        path: PathBuf,
        reason: HostFileError,
    },
}

/// Reads and parses the stat file at `path` (opened and closed here); `buf`
/// is reused between reads.
pub fn read_stat_file(path: &Path, buf: &mut Vec<u8>) -> Result<Reading, ReadError> {
    let open = OpenStat::open(path)?;
    open.read(path, buf)
}

/// `statfs.f_type` of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Whether `file` lives on procfs (where a removed entry fails reads).
pub fn is_procfs(file: &File) -> bool {
    // SAFETY: `fs` is a plain C struct fstatfs fills in; the descriptor is
    // valid for the call (borrowed from `file`).
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointer refers to `fs`, which outlives the call.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) };
    rc == 0 && fs.f_type as i64 == PROC_SUPER_MAGIC
}

/// Whether an error reading a kept file means its proc entry is gone.
pub(crate) fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESTALE)
    )
}

/// Reads all of `file` from offset 0 into `buf` (cleared first), at most
/// [`STAT_CAP`] bytes.
fn pread_all(file: &File, buf: &mut Vec<u8>) -> Result<(), HostFileError> {
    host_file::pread_capped(file, buf, STAT_CAP)
}

/// An opened stat file and the identity it had when opened.
#[derive(Debug)]
pub struct OpenStat {
    file: File,
    identity: CounterIdentity,
    /// On procfs: may be kept open and re-read.
    keep: bool,
}

impl OpenStat {
    /// Opens the stat file at `path` (in the calling thread's namespace, for
    /// a `thread-self` path: the open file stays bound to that namespace).
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let (file, meta) = host_file::open_regular(path, false).map_err(|e| map_host(path, e))?;
        let keep = is_procfs(&file);
        Ok(Self {
            file,
            identity: CounterIdentity {
                file_dev: meta.dev(),
                file_inode: meta.ino(),
            },
            keep,
        })
    }

    /// Whether this file can be kept open and re-read (it is on procfs).
    pub fn keepable(&self) -> bool {
        self.keep
    }

    /// Reads and parses the whole file from offset 0.
    pub fn read(&self, path: &Path, buf: &mut Vec<u8>) -> Result<Reading, ReadError> {
        pread_all(&self.file, buf).map_err(|e| map_host(path, e))?;
        self.parse(path, buf)
    }

    fn parse(&self, path: &Path, buf: &[u8]) -> Result<Reading, ReadError> {
        let stat = proc_stat::parse(buf).map_err(|source| ReadError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Reading {
            identity: self.identity,
            stat,
            recreated: false,
        })
    }
}

fn map_host(path: &Path, error: HostFileError) -> ReadError {
    match error {
        HostFileError::Io(source) => map_io(path, source),
        reason => ReadError::Refused {
            path: path.to_path_buf(),
            reason,
        },
    }
}

fn map_io(path: &Path, source: io::Error) -> ReadError {
    match source.kind() {
        io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// What a kept file's read found.
#[derive(Debug)]
pub enum KeptRead {
    /// Read and parsed.
    Read(Reading),
    /// The file went stale (its proc entry was removed): open it again.
    Stale,
    /// Reading or parsing failed otherwise.
    Failed(ReadError),
}

/// Reads a kept-open stat file from offset 0, telling a stale file (its proc
/// entry removed, [`is_stale`], or nothing at all from offset 0: a live stat
/// file always has its header) from other failures.
pub fn read_kept(open: &OpenStat, path: &Path, buf: &mut Vec<u8>) -> KeptRead {
    match pread_all(&open.file, buf) {
        Ok(()) if buf.is_empty() => KeptRead::Stale,
        Ok(()) => match open.parse(path, buf) {
            Ok(reading) => KeptRead::Read(reading),
            Err(e) => KeptRead::Failed(e),
        },
        Err(e) if e.io().is_some_and(is_stale) => KeptRead::Stale,
        Err(e) => KeptRead::Failed(map_host(path, e)),
    }
}

/// The agent's own stat file (`<proc>/net/stat/synproxy`): kept open on
/// procfs, opened anew each round elsewhere; see the module docs.
#[derive(Debug)]
pub struct KeptStat {
    path: PathBuf,
    open: Option<OpenStat>,
}

impl KeptStat {
    pub fn new(path: PathBuf) -> Self {
        Self { path, open: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; `buf` is reused between reads.
    pub fn read(&mut self, buf: &mut Vec<u8>) -> Result<Reading, ReadError> {
        let mut recreated = false;
        if let Some(open) = &self.open {
            match read_kept(open, &self.path, buf) {
                KeptRead::Read(reading) => return Ok(reading),
                KeptRead::Failed(e) => return Err(e),
                KeptRead::Stale => {
                    self.open = None;
                    recreated = true;
                }
            }
        }
        let open = OpenStat::open(&self.path)?;
        let mut reading = open.read(&self.path, buf)?;
        reading.recreated = recreated;
        if open.keepable() {
            self.open = Some(open);
        }
        Ok(reading)
    }

    /// Closes a kept file (the next read opens it again).
    pub fn close(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn missing_file_names_path_and_module() {
        let err = read_stat_file(Path::new("/nonexistent/net/stat/synproxy"), &mut Vec::new())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReadError::Missing { .. }));
        assert!(msg.starts_with("/nonexistent/net/stat/synproxy: "), "{msg}");
        assert!(msg.contains("nf_synproxy_core"), "{msg}");
    }

    #[test]
    fn parse_errors_name_the_path() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mismatch"
        ));
        let msg = read_stat_file(path, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tests/fixtures/mismatch: line 2: invalid number of columns"),
            "{msg}"
        );
    }

    #[test]
    fn directory_is_an_error() {
        let msg = read_stat_file(Path::new("/"), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "/: a directory, not a regular file: not read");
    }

    #[test]
    fn reads_fixture_with_identity() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/normal_8cpu"
        ));
        let reading = read_stat_file(path, &mut Vec::new()).unwrap();
        assert_eq!(reading.stat.cpus.len(), 8);
        assert_ne!(reading.identity.file_inode, 0);
    }

    /// Real-kernel tests need root and iproute2: skipped with a message
    /// elsewhere, failed on CI (CI=true).
    pub(crate) fn real_kernel() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let ip = std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if root && ip && Path::new("/proc/net/stat/synproxy").exists() {
            return true;
        }
        let msg = "real-kernel test needs root, `ip` and /proc/net/stat/synproxy";
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{msg} (CI=true)"
        );
        eprintln!("SKIPPED: {msg}");
        false
    }

    pub(crate) fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes a namespace on drop.
    pub(crate) struct TestNetns(pub String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }

    #[test]
    fn the_real_stat_file_is_kept_open_and_reread() {
        if !real_kernel() {
            return;
        }
        let mut kept = KeptStat::new(PathBuf::from("/proc/net/stat/synproxy"));
        let mut buf = Vec::new();
        let first = kept.read(&mut buf).unwrap();
        assert!(kept.open.is_some(), "procfs file not kept");
        let second = kept.read(&mut buf).unwrap();
        assert!(!first.recreated && !second.recreated);
        assert_eq!(first.identity, second.identity);
        assert_eq!(first.stat.cpus.len(), second.stat.cpus.len());
    }

    /// What the kept files rely on: a removed proc entry's open file fails
    /// with EIO (no module to unload here, so the entry is an interface's
    /// `/proc/net/dev_snmp6/<dev>`, removed with the interface, by the same
    /// kernel path as the synproxy file at a module unload), which is told
    /// from a live file's failure and makes [`KeptStat`] open the path again.
    #[test]
    fn a_removed_proc_entry_makes_the_kept_file_stale() {
        if !real_kernel() {
            return;
        }
        let name = format!("spx-kept-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let _netns = TestNetns(name.clone());
        ip(&[
            "-n", &name, "link", "add", "spxk0", "type", "veth", "peer", "name", "spxk1",
        ]);
        std::thread::scope(|s| {
            s.spawn(|| {
                let handle = File::open(format!("/run/netns/{name}")).unwrap();
                // SAFETY: valid fd; only this scoped thread changes namespace.
                let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "{}", io::Error::last_os_error());
                let path = PathBuf::from("/proc/thread-self/net/dev_snmp6/spxk0");
                let open = OpenStat::open(&path).unwrap();
                assert!(open.keepable());
                let mut buf = Vec::new();
                // Live: read (it is no synproxy file, so it fails to parse).
                let live = read_kept(&open, &path, &mut buf);
                assert!(
                    matches!(live, KeptRead::Failed(ReadError::Parse { .. })),
                    "{live:?}"
                );
                assert!(!buf.is_empty());
                ip(&["-n", &name, "link", "del", "spxk0"]);
                let gone = read_kept(&open, &path, &mut buf);
                assert!(matches!(gone, KeptRead::Stale), "{gone:?}");
                // KeptStat then opens the path again: gone for good here.
                let mut kept = KeptStat {
                    path: path.clone(),
                    open: Some(open),
                };
                let again = kept.read(&mut buf);
                assert!(matches!(again, Err(ReadError::Missing { .. })), "{again:?}");
                assert!(kept.open.is_none());
            });
        });
    }
}

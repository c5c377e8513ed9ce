//! Reading the TCP stack's and conntrack's files of each namespace, the way
//! [`super::NetnsReader`] reads the SYNPROXY file: a worker thread enters the
//! namespaces whose files are not open yet and opens them there (`/proc/net`
//! follows the thread's namespace through `thread-self`, and so does the
//! lookup of `/proc/sys/net`); files on procfs stay open and are re-read from
//! offset 0 in later rounds. A kept file whose entry was removed (module
//! unloaded, namespace gone) fails its read: it is opened again and the read
//! is marked `recreated`. A file that is missing (nf_conntrack not loaded)
//! is tried again every round. Reads are capped and files opened without
//! blocking, like the SYNPROXY file's ([`crate::sources::proc::host_file`]).

// NetnsError carries the path and identity it is about; it is built at most
// once per namespace and round, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::reader::open_error;
use super::{NamespaceId, NetnsError, NetnsTarget};
use crate::reconcile::wrap_tracker::CounterIdentity;
use crate::sources::proc::host_file::{self, HostFileError};
use crate::sources::proc::proc_file::{is_procfs, is_stale, STAT_CAP};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One file of the stack sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackFile {
    Netstat,
    Snmp,
    ConntrackStat,
    ConntrackCount,
    ConntrackMax,
}

pub const STACK_FILES: usize = 5;

impl StackFile {
    pub const ALL: [StackFile; STACK_FILES] = [
        StackFile::Netstat,
        StackFile::Snmp,
        StackFile::ConntrackStat,
        StackFile::ConntrackCount,
        StackFile::ConntrackMax,
    ];

    /// Relative to the proc root.
    pub fn relative(self) -> &'static str {
        match self {
            StackFile::Netstat => "net/netstat",
            StackFile::Snmp => "net/snmp",
            StackFile::ConntrackStat => "net/stat/nf_conntrack",
            StackFile::ConntrackCount => "sys/net/netfilter/nf_conntrack_count",
            StackFile::ConntrackMax => "sys/net/netfilter/nf_conntrack_max",
        }
    }

    /// Inside an entered namespace: `/proc/net` through `thread-self` (the
    /// entering thread's namespace); `/proc/sys/net` is looked up in the
    /// calling thread's namespace as it is.
    fn in_namespace(self, proc_root: &Path) -> PathBuf {
        match self {
            StackFile::Netstat | StackFile::Snmp | StackFile::ConntrackStat => {
                proc_root.join("thread-self").join(self.relative())
            }
            _ => proc_root.join(self.relative()),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn missing_hint(self) -> &'static str {
        match self {
            StackFile::Netstat | StackFile::Snmp => "no TCP/IP stack in this network namespace?",
            _ => "nf_conntrack may not be loaded in this network namespace",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackReadError {
    #[error("{}: file not found ({hint})", path.display())]
    Missing { path: PathBuf, hint: &'static str },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Refused {
        path: PathBuf,
        reason: HostFileError,
    },
}

impl StackReadError {
    fn new(file: StackFile, path: &Path, error: HostFileError) -> Self {
        let path = path.to_path_buf();
        match error {
            HostFileError::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                StackReadError::Missing {
                    path,
                    hint: file.missing_hint(),
                }
            }
            HostFileError::Io(source) => StackReadError::Io { path, source },
            reason => StackReadError::Refused { path, reason },
        }
    }

    /// The file is not there: its counters (if any) are gone.
    pub fn is_missing(&self) -> bool {
        matches!(self, StackReadError::Missing { .. })
    }
}

/// One file's bytes this round.
#[derive(Debug)]
pub struct FileRead {
    pub identity: CounterIdentity,
    pub bytes: Vec<u8>,
    /// The kept file went stale since the last read and was opened again:
    /// new counters, whatever their identity and values say.
    pub recreated: bool,
}

/// One file's result this round.
pub type FileResult = (StackFile, Result<FileRead, StackReadError>);

/// One namespace's files this round: for each wanted file, what reading it gave.
#[derive(Debug)]
pub struct NsStack {
    pub id: NamespaceId,
    pub files: Vec<FileResult>,
}

#[derive(Debug)]
struct KeptFile {
    file: File,
    identity: CounterIdentity,
    keep: bool,
}

fn open_file(file: StackFile, path: &Path) -> Result<KeptFile, StackReadError> {
    let (handle, meta) =
        host_file::open_regular(path, false).map_err(|e| StackReadError::new(file, path, e))?;
    let keep = is_procfs(&handle);
    Ok(KeptFile {
        file: handle,
        identity: CounterIdentity {
            file_dev: meta.dev(),
            file_inode: meta.ino(),
        },
        keep,
    })
}

/// What reading a kept file gave.
enum Kept {
    Read(FileRead),
    Stale,
    Failed(StackReadError),
}

fn read_kept(kept: &KeptFile, file: StackFile, path: &Path) -> Kept {
    let mut bytes = Vec::new();
    match host_file::pread_capped(&kept.file, &mut bytes, STAT_CAP) {
        // A live file always has something to say from offset 0.
        Ok(()) if bytes.is_empty() => Kept::Stale,
        Ok(()) => Kept::Read(FileRead {
            identity: kept.identity,
            bytes,
            recreated: false,
        }),
        Err(e) if e.io().is_some_and(is_stale) => Kept::Stale,
        Err(e) => Kept::Failed(StackReadError::new(file, path, e)),
    }
}

/// The files of one place (the agent's own namespace, or one entered).
#[derive(Debug, Default)]
struct KeptFiles {
    files: [Option<KeptFile>; STACK_FILES],
}

impl KeptFiles {
    /// Reads the kept files among `wanted`; returns their results and the
    /// files to open (with whether a kept one went stale).
    fn read(
        &mut self,
        wanted: &[StackFile],
        path: impl Fn(StackFile) -> PathBuf,
    ) -> (Vec<FileResult>, Vec<(StackFile, bool)>) {
        let mut done = Vec::new();
        let mut to_open = Vec::new();
        for &file in wanted {
            let slot = &mut self.files[file.index()];
            match slot.as_ref().map(|kept| read_kept(kept, file, &path(file))) {
                None => to_open.push((file, false)),
                Some(Kept::Read(read)) => done.push((file, Ok(read))),
                Some(Kept::Failed(e)) => done.push((file, Err(e))),
                Some(Kept::Stale) => {
                    *slot = None;
                    to_open.push((file, true));
                }
            }
        }
        (done, to_open)
    }

    /// Reads files just opened, keeping those on procfs.
    fn take_opened(
        &mut self,
        opened: Vec<(StackFile, bool, Result<KeptFile, StackReadError>)>,
        path: impl Fn(StackFile) -> PathBuf,
        keep: bool,
        done: &mut Vec<FileResult>,
    ) {
        for (file, recreated, result) in opened {
            let result = result.and_then(|kept| match read_kept(&kept, file, &path(file)) {
                Kept::Read(mut read) => {
                    read.recreated = recreated;
                    if keep && kept.keep {
                        self.files[file.index()] = Some(kept);
                    }
                    Ok(read)
                }
                // Empty right after opening: nothing to report this round.
                Kept::Stale => Err(StackReadError::Io {
                    path: path(file),
                    source: io::Error::from_raw_os_error(libc::ENODATA),
                }),
                Kept::Failed(e) => Err(e),
            });
            done.push((file, result));
        }
        done.sort_by_key(|(file, _)| file.index());
    }
}

#[derive(Debug)]
struct KeptNs {
    id: NamespaceId,
    files: KeptFiles,
    round: u64,
}

/// Reads the stack files of the agent's own namespace and of each selected
/// one, keeping them open between rounds (see the module docs).
#[derive(Debug)]
pub struct StackReader {
    own: KeptFiles,
    kept: HashMap<(u64, u64), KeptNs>,
    /// At most this many namespaces' files are kept (the rest are opened
    /// every round).
    max_kept: usize,
    round: u64,
}

impl Default for StackReader {
    fn default() -> Self {
        Self::new()
    }
}

impl StackReader {
    pub fn new() -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills in `limit`, which outlives the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let soft = if rc == 0 { limit.rlim_cur } else { 1024 };
        // The SYNPROXY files take one descriptor per namespace; these up to
        // five more. Leave room for both and everything else.
        let per_ns = (STACK_FILES + 1) as u64;
        Self {
            own: KeptFiles::default(),
            kept: HashMap::new(),
            max_kept: usize::try_from(soft.saturating_sub(512) / per_ns).unwrap_or(usize::MAX),
            round: 0,
        }
    }

    /// Closes the files of namespaces not read since the last call.
    pub fn end_round(&mut self) {
        let round = self.round;
        self.kept.retain(|_, k| k.round == round);
        self.round += 1;
    }

    /// Reads `wanted` of the agent's own namespace (`<proc>/net/...`).
    pub fn read_own(&mut self, wanted: &[StackFile], proc_root: &Path) -> Vec<FileResult> {
        let path = |f: StackFile| proc_root.join(f.relative());
        let (mut done, to_open) = self.own.read(wanted, path);
        let opened = to_open
            .into_iter()
            .map(|(file, recreated)| (file, recreated, open_file(file, &path(file))))
            .collect();
        self.own.take_opened(opened, path, true, &mut done);
        done
    }

    /// Reads `wanted` inside each namespace, in order.
    pub fn read(
        &mut self,
        targets: &[NetnsTarget],
        proc_root: &Path,
        wanted: &[StackFile],
    ) -> Vec<Result<NsStack, NetnsError>> {
        let path = |f: StackFile| f.in_namespace(proc_root);
        let mut results: Vec<Option<Result<NsStack, NetnsError>>> = Vec::new();
        // Targets to enter: index, key, files to open.
        let mut to_enter: Vec<(usize, Vec<(StackFile, bool)>)> = Vec::new();
        let mut partial: HashMap<usize, NsStack> = HashMap::new();
        for (i, target) in targets.iter().enumerate() {
            let key = match target.expected {
                Some(key) => key,
                None => match fs::metadata(&target.handle) {
                    Ok(meta) => (meta.dev(), meta.ino()),
                    Err(e) => {
                        results.push(Some(Err(open_error(target, e))));
                        continue;
                    }
                },
            };
            results.push(None);
            let (done, to_open) = match self.kept.get_mut(&key) {
                Some(kept) => {
                    kept.round = self.round;
                    let (done, to_open) = kept.files.read(wanted, path);
                    partial.insert(
                        i,
                        NsStack {
                            id: kept.id,
                            files: done,
                        },
                    );
                    (true, to_open)
                }
                None => (false, wanted.iter().map(|&f| (f, false)).collect()),
            };
            if !to_open.is_empty() || !done {
                to_enter.push((i, to_open));
            }
        }
        if !to_enter.is_empty() {
            let opened = open_in_namespaces(targets, &to_enter, proc_root);
            for ((i, _), opened) in to_enter.into_iter().zip(opened) {
                let result = opened.map(|(key, id, files)| {
                    let mut ns = partial.remove(&i).unwrap_or(NsStack {
                        id,
                        files: Vec::new(),
                    });
                    let keep = self.kept.contains_key(&key) || self.kept.len() < self.max_kept;
                    let entry = self.kept.entry(key).or_insert_with(|| KeptNs {
                        id,
                        files: KeptFiles::default(),
                        round: self.round,
                    });
                    entry.files.take_opened(files, path, keep, &mut ns.files);
                    ns
                });
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(result);
                }
            }
            // Namespaces entered whose files could not be kept.
            self.kept
                .retain(|_, k| k.files.files.iter().any(Option::is_some));
        }
        for (i, ns) in partial {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(Ok(ns));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NetnsError::Thread("namespace not read".into()))))
            .collect()
    }
}

type Opened = (
    (u64, u64),
    NamespaceId,
    Vec<(StackFile, bool, Result<KeptFile, StackReadError>)>,
);

/// Enters each of `which` in turn from one worker thread and opens its files.
fn open_in_namespaces(
    targets: &[NetnsTarget],
    which: &[(usize, Vec<(StackFile, bool)>)],
    proc_root: &Path,
) -> Vec<Result<Opened, NetnsError>> {
    super::reader::in_worker("netns-stack", which, |(i, files)| {
        open_one(&targets[*i], files, proc_root)
    })
}

fn open_one(
    target: &NetnsTarget,
    files: &[(StackFile, bool)],
    proc_root: &Path,
) -> Result<Opened, NetnsError> {
    let (key, id) = super::reader::enter_target(target)?;
    let opened = files
        .iter()
        .map(|&(file, recreated)| {
            (
                file,
                recreated,
                open_file(file, &file.in_namespace(proc_root)),
            )
        })
        .collect();
    Ok((key, id, opened))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::proc::netns::named_targets;

    #[test]
    fn own_files_of_a_proc_tree_are_read_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net")).unwrap();
        fs::write(dir.path().join("net/snmp"), "Tcp: InSegs\nTcp: 4\n").unwrap();
        let mut reader = StackReader::new();
        let results = reader.read_own(&[StackFile::Snmp, StackFile::ConntrackCount], dir.path());
        assert_eq!(results.len(), 2);
        match &results[0] {
            (StackFile::Snmp, Ok(read)) => {
                assert_eq!(read.bytes, b"Tcp: InSegs\nTcp: 4\n");
                assert!(!read.recreated);
            }
            other => panic!("{other:?}"),
        }
        match &results[1] {
            (StackFile::ConntrackCount, Err(e)) => {
                assert!(e.is_missing());
                let msg = e.to_string();
                assert!(msg.ends_with("sys/net/netfilter/nf_conntrack_count: file not found (nf_conntrack may not be loaded in this network namespace)"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // Not procfs: nothing kept, read anew (a changed file is seen).
        fs::write(dir.path().join("net/snmp"), "Tcp: InSegs\nTcp: 5\n").unwrap();
        let results = reader.read_own(&[StackFile::Snmp], dir.path());
        assert!(matches!(&results[0], (_, Ok(r)) if r.bytes.ends_with(b"5\n")));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net")).unwrap();
        let fifo = dir.path().join("net/netstat");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let results = StackReader::new().read_own(&[StackFile::Netstat], dir.path());
        let msg = match &results[0] {
            (_, Err(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(
            msg.ends_with("a FIFO (named pipe), not a regular file: not read"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_named_namespace_is_reported() {
        let targets = named_targets(&["nope".into()], Path::new("/nonexistent-netns-dir"));
        let results = StackReader::new().read(&targets, Path::new("/proc"), &StackFile::ALL);
        assert!(matches!(&results[..], [Err(NetnsError::NotFound { .. })]));
    }

    /// The real files inside a fresh namespace: opened there, kept, re-read.
    #[test]
    fn real_namespace_files_are_kept_and_reread() {
        use crate::sources::proc::proc_file::tests::{ip, real_kernel, TestNetns};
        if !real_kernel() {
            return;
        }
        let name = format!("spx-stack-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let _netns = TestNetns(name.clone());
        let targets = named_targets(std::slice::from_ref(&name), Path::new("/run/netns"));
        let mut reader = StackReader::new();
        for round in 0..2 {
            let results = reader.read(&targets, Path::new("/proc"), &StackFile::ALL);
            reader.end_round();
            let ns = match results.into_iter().next() {
                Some(Ok(ns)) => ns,
                other => panic!("{other:?}"),
            };
            assert_eq!(ns.files.len(), STACK_FILES);
            for (file, result) in &ns.files {
                let read = match result {
                    Ok(read) => read,
                    // Built as a module and not loaded: allowed to be missing.
                    Err(e)
                        if e.is_missing()
                            && *file != StackFile::Netstat
                            && *file != StackFile::Snmp =>
                    {
                        continue
                    }
                    Err(e) => panic!("{file:?}: {e}"),
                };
                assert!(!read.recreated);
                if *file == StackFile::ConntrackCount {
                    // A fresh namespace tracks nothing yet.
                    assert_eq!(read.bytes, b"0\n", "round {round}");
                }
            }
            assert_eq!(reader.kept.len(), 1, "round {round}");
        }
    }
}

//! Network namespaces: which ones to read, and reading the stat file inside
//! each. The file is per namespace and `/proc/net` follows the reading thread's
//! namespace, so a worker thread enters each namespace with `setns(2)` and
//! opens `<proc>/thread-self/net/stat/synproxy` there. The open file stays
//! bound to that namespace whichever thread reads it, so [`NetnsReader`]
//! keeps it open and re-reads it from offset 0 in later rounds without
//! entering the namespace again: the worker thread is only started for
//! namespaces not open yet.
//!
//! An open stat file holds a reference on its namespace, which therefore
//! lives on (with its inode number) while the file is kept. So a kept file
//! found under a namespace's nsfs (device, inode) is that namespace's, and a
//! namespace the agent no longer finds is released at the end of the round
//! that did not find it (its file is closed): a deleted namespace outlives
//! its deletion by at most one interval.

// NetnsError carries the path and identity it is about; it is built at most
// once per namespace and round, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::netns_label;
use super::proc_file::{read_kept, KeptRead, KeptStat, OpenStat, ReadError, Reading, STAT_FILE};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `PROC_NET_INIT_INO`: the initial network namespace's fixed inode number.
pub const INIT_NETNS_INODE: u64 = 0xEFFF_FFF9;

/// The label of the initial network namespace when it has no `ip netns` name.
pub const INIT_LABEL: &str = "init";

/// What identifies a network namespace for the life of the agent: the nsfs
/// device and inode, plus the netns cookie where the kernel has one (5.14+).
/// Inode numbers of dead namespaces are reused; cookies never are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceId {
    pub dev: u64,
    pub inode: u64,
    pub cookie: Option<u64>,
}

impl NamespaceId {
    /// How the eBPF maps key this namespace: by its cookie where the kernel
    /// has one (the programs then read only the cookie), else by
    /// `net->ns.inum` with cookie 0.
    pub fn ebpf_key(&self) -> (u32, u64) {
        match self.cookie {
            Some(cookie) if cookie != 0 => (synproxy_common::cookie_key(cookie), cookie),
            _ => (self.inode as u32, 0),
        }
    }
}

/// One namespace to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsTarget {
    /// The `netns` tag value (unique within one round).
    pub label: String,
    /// A file that refers to the namespace: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub handle: PathBuf,
    /// Found by scanning processes: may vanish at any time, which is no error.
    pub transient: bool,
    /// nsfs (device, inode) seen at discovery: the namespace entered must be
    /// this one (a PID or a name can be reused between discovery and reading).
    pub expected: Option<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "netns {label}: {}: no such network namespace (see `ip netns list`)",
        shown(handle)
    )]
    NotFound { label: String, handle: PathBuf },
    #[error("netns {label}: {}: {source}", shown(handle))]
    Open {
        label: String,
        handle: PathBuf,
        source: io::Error,
    },
    #[error(
        "netns {label}: {} now refers to another namespace than the one discovered",
        shown(handle)
    )]
    Replaced { label: String, handle: PathBuf },
    #[error("netns {label}: cannot enter it (setns: {source}); the agent needs CAP_SYS_ADMIN for --netns")]
    Enter { label: String, source: io::Error },
    #[error("netns {label}: {source}")]
    Read {
        label: String,
        id: NamespaceId,
        source: ReadError,
    },
    #[error("netns reader thread failed: {0}")]
    Thread(String),
}

/// A namespace handle as error messages show it: its name part may hold
/// any byte, so it is written by the label rule (no control character
/// reaches a log or the live view's status line).
fn shown(handle: &Path) -> String {
    netns_label::encode(handle.as_os_str().as_bytes())
}

impl NetnsError {
    /// The namespace went away (or was replaced) between discovery and reading.
    pub fn is_vanished(&self) -> bool {
        match self {
            NetnsError::NotFound { .. } | NetnsError::Replaced { .. } => true,
            NetnsError::Open { source, .. } | NetnsError::Enter { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EINVAL)
            ),
            _ => false,
        }
    }
}

/// Namespaces named with `ip netns add` (files under `netns_dir`), deduplicated.
pub fn named_targets(names: &[String], netns_dir: &Path) -> Vec<NetnsTarget> {
    let mut targets: Vec<NetnsTarget> = Vec::with_capacity(names.len());
    for name in names {
        let label = netns_label::encode(name.as_bytes());
        if targets.iter().any(|t| t.label == label) {
            continue;
        }
        targets.push(NetnsTarget {
            label,
            handle: netns_dir.join(name),
            transient: false,
            expected: None,
        });
    }
    targets
}

/// Whether `label` has the shape of a generated label (`init`, `ns-<digits>`).
pub fn looks_generated(label: &str) -> bool {
    label == INIT_LABEL
        || label
            .strip_prefix("ns-")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Every distinct network namespace on the host: named ones from `netns_dir`,
/// then those of running processes under `proc_root`. Labels are unique: a
/// namespace with a name is labelled by it (the first name in sorted order when
/// it has several); an unnamed one gets `init` (the initial namespace) or
/// `ns-<inode>`, and if a name already took that label, `ns-<inode>` or then
/// `ns-<inode>-unnamed`.
pub fn discover_all(proc_root: &Path, netns_dir: &Path) -> Vec<NetnsTarget> {
    discover(proc_root, netns_dir).targets
}

/// What [`discover`] found.
#[derive(Debug, Default)]
pub struct Discovery {
    pub targets: Vec<NetnsTarget>,
    /// Processes whose `/proc/PID/ns/net` the agent may not inspect (EACCES or
    /// EPERM: another user's process, and no CAP_SYS_PTRACE): their
    /// namespaces may be missing from `targets`. The first one's path and error.
    pub denied: usize,
    pub first_denied: Option<(PathBuf, io::Error)>,
}

/// [`discover_all`], also counting the processes that could not be inspected.
pub fn discover(proc_root: &Path, netns_dir: &Path) -> Discovery {
    let mut denied = 0usize;
    let mut first_denied = None;
    let mut by_inode: BTreeMap<(u64, u64), NetnsTarget> = BTreeMap::new();

    // Every name, UTF-8 or not: the label rule is injective on bytes.
    let mut names: Vec<(Vec<u8>, PathBuf)> = fs::read_dir(netns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().as_bytes().to_vec(), e.path()))
        .collect();
    names.sort();
    // Bound namespace files live on nsfs, like our own /proc/self/ns/net.
    let nsfs_dev = fs::metadata(proc_root.join("self/ns/net"))
        .map(|m| m.dev())
        .ok();
    for (name, path) in names {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        // An entry whose bind mount is gone is a plain file: not a namespace.
        if nsfs_dev.is_some_and(|dev| dev != meta.dev()) {
            continue;
        }
        let key = (meta.dev(), meta.ino());
        by_inode.entry(key).or_insert(NetnsTarget {
            label: netns_label::encode(&name),
            handle: path,
            transient: false,
            expected: Some(key),
        });
    }
    let mut unnamed: Vec<NetnsTarget> = Vec::new();
    if let Ok(entries) = fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let handle = proc_root.join(pid).join("ns/net");
            // A process that just exited is no loss; one we may not inspect
            // is counted, never skipped silently.
            let meta = match fs::metadata(&handle) {
                Ok(meta) => meta,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                    denied += 1;
                    first_denied.get_or_insert((handle, e));
                    continue;
                }
                Err(_) => continue,
            };
            let key = (meta.dev(), meta.ino());
            if by_inode.contains_key(&key) || unnamed.iter().any(|t| t.expected == Some(key)) {
                continue;
            }
            unnamed.push(NetnsTarget {
                label: String::new(),
                handle,
                transient: true,
                expected: Some(key),
            });
        }
    }
    for mut target in unnamed {
        let inode = target.expected.map_or(0, |(_, ino)| ino);
        let taken = |label: &str| by_inode.values().any(|t| t.label == label);
        let mut label = unnamed_label(inode);
        if taken(&label) {
            label = format!("ns-{inode}");
        }
        if taken(&label) {
            label = format!("ns-{inode}-unnamed");
        }
        target.label = label;
        if let Some(key) = target.expected {
            by_inode.insert(key, target);
        }
    }
    Discovery {
        targets: by_inode.into_values().collect(),
        denied,
        first_denied,
    }
}

fn unnamed_label(inode: u64) -> String {
    if inode == INIT_NETNS_INODE {
        INIT_LABEL.to_string()
    } else {
        format!("ns-{inode}")
    }
}

/// The identity of the calling thread's current network namespace, given its
/// namespace file (`/proc/self/ns/net` or an open handle's metadata).
fn identity_here(dev: u64, inode: u64) -> NamespaceId {
    NamespaceId {
        dev,
        inode,
        cookie: current_netns_cookie(),
    }
}

/// The identity of the agent's own network namespace (`<proc>/self/ns/net`).
pub fn own_identity(proc_root: &Path) -> Option<NamespaceId> {
    let meta = fs::metadata(proc_root.join("self/ns/net")).ok()?;
    Some(identity_here(meta.dev(), meta.ino()))
}

/// The netns cookie of the calling thread's network namespace
/// (`SO_NETNS_COOKIE`, Linux 5.14+); None where the kernel has none.
pub fn current_netns_cookie() -> Option<u64> {
    // SAFETY: plain socket(2); the returned descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the pointers describe `cookie` and `len`, which outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

/// One namespace's stat file, with whatever `around` returned just before and
/// just after it was read (the eBPF counts that bracket the read).
#[derive(Debug)]
pub struct NsReading<B> {
    pub id: NamespaceId,
    pub before: B,
    pub reading: Reading,
    pub after: B,
}

/// Reads the agent's own namespace's stat file, bracketed by `around` (only
/// called when the namespace's identity is known).
pub fn read_own<B: Default>(
    file: &mut KeptStat,
    id: Option<NamespaceId>,
    around: &dyn Fn(&NamespaceId) -> B,
    buf: &mut Vec<u8>,
) -> Result<(Option<NamespaceId>, B, Reading, B), ReadError> {
    let call = |id: &Option<NamespaceId>| id.as_ref().map(around).unwrap_or_default();
    let before = call(&id);
    let reading = file.read(buf)?;
    let after = call(&id);
    Ok((id, before, reading, after))
}

/// A namespace's stat file kept open between rounds.
#[derive(Debug)]
struct KeptNs {
    id: NamespaceId,
    open: OpenStat,
    /// The round ([`NetnsReader::end_round`] count) it was last selected in.
    round: u64,
}

/// A namespace opened this round, by the worker thread.
struct Opened {
    key: (u64, u64),
    id: NamespaceId,
    open: OpenStat,
}

/// Reads the stat file of each namespace, keeping the files open between
/// rounds (see the module docs).
#[derive(Debug)]
pub struct NetnsReader {
    kept: HashMap<(u64, u64), KeptNs>,
    /// At most this many files are kept (the rest are opened every round).
    max_kept: usize,
    round: u64,
    buf: Vec<u8>,
}

impl Default for NetnsReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Descriptors left for everything else when files are kept open.
const SPARE_FDS: u64 = 256;

impl NetnsReader {
    pub fn new() -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills in `limit`, which outlives the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let soft = if rc == 0 { limit.rlim_cur } else { 1024 };
        Self {
            kept: HashMap::new(),
            max_kept: usize::try_from(soft.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX),
            round: 0,
            buf: Vec::new(),
        }
    }

    /// How many stat files are kept open.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Closes every kept file (and so releases every namespace).
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    /// Closes the files of namespaces not read since the last call: they
    /// were not selected (or not found) this round.
    pub fn end_round(&mut self) {
        let round = self.round;
        self.kept.retain(|_, k| k.round == round);
        self.round += 1;
    }

    /// Reads the stat file inside each namespace, in order: kept files are
    /// re-read from offset 0 here; the others are opened first by one worker
    /// thread that enters them in turn (entering a namespace only affects that
    /// thread), and kept if they are on procfs.
    pub fn read<B: Send>(
        &mut self,
        targets: &[NetnsTarget],
        proc_root: &Path,
        around: &(dyn Fn(&NamespaceId) -> B + Sync),
    ) -> Vec<Result<NsReading<B>, NetnsError>> {
        let path = proc_root.join("thread-self").join(STAT_FILE);
        let mut buf = std::mem::take(&mut self.buf);
        let mut results: Vec<Option<Result<NsReading<B>, NetnsError>>> =
            Vec::with_capacity(targets.len());
        // Targets to open, with whether a kept file of theirs went stale.
        let mut to_open: Vec<(usize, bool)> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let key = match target.expected {
                Some(key) => key,
                // Named on the command line: where its name points now.
                None => match fs::metadata(&target.handle) {
                    Ok(meta) => (meta.dev(), meta.ino()),
                    Err(e) => {
                        results.push(Some(Err(open_error(target, e))));
                        continue;
                    }
                },
            };
            let Some(kept) = self.kept.get_mut(&key) else {
                results.push(None);
                to_open.push((i, false));
                continue;
            };
            kept.round = self.round;
            let id = kept.id;
            let before = around(&id);
            match read_kept(&kept.open, &path, &mut buf) {
                KeptRead::Read(reading) => {
                    let after = around(&id);
                    results.push(Some(Ok(NsReading {
                        id,
                        before,
                        reading,
                        after,
                    })));
                }
                KeptRead::Failed(source) => results.push(Some(Err(NetnsError::Read {
                    label: target.label.clone(),
                    id,
                    source,
                }))),
                KeptRead::Stale => {
                    self.kept.remove(&key);
                    results.push(None);
                    to_open.push((i, true));
                }
            }
        }
        if !to_open.is_empty() {
            let opened = open_in_namespaces(targets, &to_open, &path);
            for ((i, recreated), opened) in to_open.into_iter().zip(opened) {
                let target = &targets[i];
                let result =
                    opened.and_then(|opened| {
                        let id = opened.id;
                        let before = around(&id);
                        let mut reading = opened.open.read(&path, &mut buf).map_err(|source| {
                            NetnsError::Read {
                                label: target.label.clone(),
                                id,
                                source,
                            }
                        })?;
                        let after = around(&id);
                        reading.recreated = recreated;
                        if opened.open.keepable() && self.kept.len() < self.max_kept {
                            self.kept.insert(
                                opened.key,
                                KeptNs {
                                    id,
                                    open: opened.open,
                                    round: self.round,
                                },
                            );
                        }
                        Ok(NsReading {
                            id,
                            before,
                            reading,
                            after,
                        })
                    });
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(result);
                }
            }
        }
        self.buf = buf;
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NetnsError::Thread("namespace not read".into()))))
            .collect()
    }
}

/// Reads the stat file inside each namespace once, without keeping anything
/// open (`--once`, tests).
pub fn read_in_namespaces<B: Send>(
    targets: &[NetnsTarget],
    proc_root: &Path,
    around: &(dyn Fn(&NamespaceId) -> B + Sync),
) -> Vec<Result<NsReading<B>, NetnsError>> {
    let mut reader = NetnsReader {
        max_kept: 0,
        ..NetnsReader::new()
    };
    reader.read(targets, proc_root, around)
}

fn open_error(target: &NetnsTarget, source: io::Error) -> NetnsError {
    if source.kind() == io::ErrorKind::NotFound {
        NetnsError::NotFound {
            label: target.label.clone(),
            handle: target.handle.clone(),
        }
    } else {
        NetnsError::Open {
            label: target.label.clone(),
            handle: target.handle.clone(),
            source,
        }
    }
}

/// Opens the stat file inside each of `targets[i]` for `(i, _)` in `which`,
/// in order, from one worker thread.
fn open_in_namespaces(
    targets: &[NetnsTarget],
    which: &[(usize, bool)],
    path: &Path,
) -> Vec<Result<Opened, NetnsError>> {
    let joined = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns-opener".into())
            .spawn_scoped(scope, || {
                which
                    .iter()
                    .map(|&(i, _)| open_one(&targets[i], path))
                    .collect::<Vec<_>>()
            });
        match worker {
            Ok(handle) => handle
                .join()
                .map_err(|_| NetnsError::Thread("netns reader panicked".into())),
            Err(e) => Err(NetnsError::Thread(e.to_string())),
        }
    });
    match joined {
        Ok(results) => results,
        Err(e) => which
            .iter()
            .map(|_| Err(NetnsError::Thread(e.to_string())))
            .collect(),
    }
}

fn open_one(target: &NetnsTarget, path: &Path) -> Result<Opened, NetnsError> {
    let ns: File = super::host_file::open_ns(&target.handle).map_err(|e| open_error(target, e))?;
    let meta = ns.metadata().map_err(|e| open_error(target, e))?;
    let key = (meta.dev(), meta.ino());
    if target.expected.is_some_and(|expected| expected != key) {
        return Err(NetnsError::Replaced {
            label: target.label.clone(),
            handle: target.handle.clone(),
        });
    }
    // SAFETY: `ns` is an open file descriptor owned by this function; setns only
    // changes the calling (worker) thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            label: target.label.clone(),
            source: io::Error::last_os_error(),
        });
    }
    let id = identity_here(meta.dev(), meta.ino());
    let open = OpenStat::open(path).map_err(|source| NetnsError::Read {
        label: target.label.clone(),
        id,
        source,
    })?;
    Ok(Opened { key, id, open })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_label_shapes() {
        assert!(looks_generated("init"));
        assert!(looks_generated("ns-4026532282"));
        assert!(!looks_generated("ns-"));
        assert!(!looks_generated("ns-blue"));
        assert!(!looks_generated("initial"));
    }

    #[test]
    fn named_targets_are_deduplicated() {
        let t = named_targets(
            &["a".into(), "b".into(), "a".into()],
            Path::new("/run/netns"),
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn labels() {
        assert_eq!(unnamed_label(INIT_NETNS_INODE), "init");
        assert_eq!(unnamed_label(4026532282), "ns-4026532282");
    }

    #[test]
    fn missing_named_namespace_is_reported_with_its_path() {
        let targets = named_targets(&["nope".into()], Path::new("/nonexistent-netns-dir"));
        let results = read_in_namespaces(&targets, Path::new("/proc"), &|_| ());
        let err = match &results[..] {
            [Err(e)] => e.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            err,
            "netns nope: /nonexistent-netns-dir/nope: no such network namespace (see `ip netns list`)"
        );
    }

    #[test]
    fn a_handle_with_control_characters_is_shown_escaped() {
        let target = NetnsTarget {
            label: netns_label::encode(b"x\x1b[2J"),
            handle: PathBuf::from(std::ffi::OsStr::from_bytes(
                b"/nonexistent-dir/x\x1b[2J\xff",
            )),
            transient: false,
            expected: None,
        };
        let results = read_in_namespaces(&[target], Path::new("/proc"), &|_| ());
        let err = match &results[..] {
            [Err(e)] => e.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            err,
            "netns x\\x1b[2J: /nonexistent-dir/x\\x1b[2J\\xff: no such network namespace (see `ip netns list`)"
        );
    }

    #[test]
    fn discovery_finds_our_own_namespace() {
        let own = own_identity(Path::new("/proc")).expect("/proc/self/ns/net");
        let all = discover_all(Path::new("/proc"), Path::new("/nonexistent-netns-dir"));
        assert!(
            all.iter()
                .any(|t| t.label == unnamed_label(own.inode)
                    && t.expected == Some((own.dev, own.inode))),
            "{all:?}"
        );
    }

    /// Kept files across rounds, and a namespace replaced under its name: a
    /// new identity (new series), the old namespace's file released.
    #[test]
    fn kept_files_follow_a_replaced_namespace() {
        use crate::sources::proc_file::tests::{ip, real_kernel, TestNetns};
        if !real_kernel() {
            return;
        }
        let name = format!("spx-keep-{}", std::process::id());
        let dir = Path::new("/run/netns");
        ip(&["netns", "add", &name]);
        let _netns = TestNetns(name.clone());
        let targets = named_targets(std::slice::from_ref(&name), dir);
        let mut reader = NetnsReader::new();
        let read = |reader: &mut NetnsReader| {
            let results = reader.read(&targets, Path::new("/proc"), &|_| ());
            reader.end_round();
            match results.into_iter().next() {
                Some(Ok(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let first = read(&mut reader);
        assert_eq!(reader.kept(), 1);
        let second = read(&mut reader);
        assert_eq!(reader.kept(), 1);
        assert_eq!(first.id, second.id);
        assert!(!second.reading.recreated);

        // Replaced: deleted and created again under the same name. The kept
        // file holds the old namespace (and its inode) until the round that
        // no longer finds it, so the new one cannot reuse the inode.
        ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]);
        let third = read(&mut reader);
        assert_ne!(third.id, first.id);
        assert_eq!(reader.kept(), 1, "the old namespace's file is released");

        // Not selected any more: released.
        reader.end_round();
        assert_eq!(reader.kept(), 0);
    }
}

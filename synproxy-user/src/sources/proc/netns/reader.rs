//! Reading the stat file inside each namespace: a worker thread enters the
//! namespaces not open yet, and the files stay open between rounds (see the
//! parent module's docs).

// NetnsError carries the path and identity it is about; it is built at most
// once per namespace and round, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::{identity_here, NamespaceId, NetnsError, NetnsTarget};
use crate::sources::proc::host_file;
use crate::sources::proc::proc_file::{
    read_kept, KeptRead, KeptStat, OpenStat, ReadError, Reading, STAT_FILE,
};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

pub(super) fn open_error(target: &NetnsTarget, source: io::Error) -> NetnsError {
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
    in_worker("netns-opener", which, |&(i, _)| open_one(&targets[i], path))
}

/// `open(item)` for each of `items`, in order, on one worker thread named
/// `name` (which enters namespaces; the caller's thread never does). A
/// worker that cannot start or panics fails every item.
pub(super) fn in_worker<I: Sync, T: Send>(
    name: &str,
    items: &[I],
    open: impl Fn(&I) -> Result<T, NetnsError> + Sync,
) -> Vec<Result<T, NetnsError>> {
    let joined = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, || items.iter().map(&open).collect::<Vec<_>>());
        match worker {
            Ok(handle) => handle
                .join()
                .map_err(|_| NetnsError::Thread(format!("{name} panicked"))),
            Err(e) => Err(NetnsError::Thread(e.to_string())),
        }
    });
    match joined {
        Ok(results) => results,
        Err(e) => items
            .iter()
            .map(|_| Err(NetnsError::Thread(e.to_string())))
            .collect(),
    }
}

/// Moves the calling (worker) thread into `target`'s namespace, which must
/// be the one seen at discovery; its nsfs (device, inode) and identity.
pub(super) fn enter_target(target: &NetnsTarget) -> Result<((u64, u64), NamespaceId), NetnsError> {
    let ns: File = host_file::open_ns(&target.handle).map_err(|e| open_error(target, e))?;
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
    Ok((key, identity_here(meta.dev(), meta.ino())))
}

fn open_one(target: &NetnsTarget, path: &Path) -> Result<Opened, NetnsError> {
    let (key, id) = enter_target(target)?;
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
    use crate::sources::proc::netns::{named_targets, netns_label};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

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

    /// Kept files across rounds, and a namespace replaced under its name: a
    /// new identity (new series), the old namespace's file released.
    #[test]
    fn kept_files_follow_a_replaced_namespace() {
        use crate::sources::proc::proc_file::tests::{ip, real_kernel, TestNetns};
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

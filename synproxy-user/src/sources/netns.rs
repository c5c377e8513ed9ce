//! Network namespaces: which ones to read, and reading the stat file inside
//! each. The file is per namespace and `/proc/net` follows the reading thread's
//! namespace, so a short-lived worker thread enters each namespace with
//! `setns(2)` and reads `<proc>/thread-self/net/stat/synproxy` there.

use super::proc_file::{read_stat_file, ReadError, Reading, STAT_FILE};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `PROC_NET_INIT_INO`: the initial network namespace's fixed inode number.
pub const INIT_NETNS_INODE: u64 = 0xEFFF_FFF9;

/// The label of the initial network namespace when it has no `ip netns` name.
pub const INIT_LABEL: &str = "init";

/// One namespace to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsTarget {
    /// The `netns` tag value.
    pub label: String,
    /// A file that refers to the namespace: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub handle: PathBuf,
    /// Found by scanning processes: may vanish at any time, which is no error.
    pub transient: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {label}: {}: no such network namespace (see `ip netns list`)", handle.display())]
    NotFound { label: String, handle: PathBuf },
    #[error("netns {label}: {}: {source}", handle.display())]
    Open {
        label: String,
        handle: PathBuf,
        source: io::Error,
    },
    #[error("netns {label}: cannot enter it (setns: {source}); the agent needs CAP_SYS_ADMIN for --netns")]
    Enter { label: String, source: io::Error },
    #[error("netns {label}: {source}")]
    Read { label: String, source: ReadError },
    #[error("netns reader thread failed: {0}")]
    Thread(String),
}

impl NetnsError {
    /// The namespace went away between discovery and reading.
    pub fn is_vanished(&self) -> bool {
        match self {
            NetnsError::NotFound { .. } => true,
            NetnsError::Open { source, .. } | NetnsError::Enter { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EINVAL)
            ),
            _ => false,
        }
    }
}

/// Namespaces named with `ip netns add` (files under `netns_dir`).
pub fn named_targets(names: &[String], netns_dir: &Path) -> Vec<NetnsTarget> {
    names
        .iter()
        .map(|name| NetnsTarget {
            label: name.clone(),
            handle: netns_dir.join(name),
            transient: false,
        })
        .collect()
}

/// Every distinct network namespace on the host: named ones from `netns_dir`,
/// then those of running processes under `proc_root`. A namespace with a name
/// is labelled by it, the initial one `init`, any other `ns-<inode>`.
pub fn discover_all(proc_root: &Path, netns_dir: &Path) -> Vec<NetnsTarget> {
    let mut by_inode: BTreeMap<u64, NetnsTarget> = BTreeMap::new();

    let mut names: Vec<(String, PathBuf)> = fs::read_dir(netns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
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
        by_inode.entry(meta.ino()).or_insert(NetnsTarget {
            label: name,
            handle: path,
            transient: false,
        });
    }

    let Ok(entries) = fs::read_dir(proc_root) else {
        return by_inode.into_values().collect();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let handle = proc_root.join(pid).join("ns/net");
        // Processes we may not inspect (or that just exited) are skipped.
        let Some(inode) = fs::read_link(&handle)
            .ok()
            .and_then(|link| parse_ns_link(&link.to_string_lossy()))
        else {
            continue;
        };
        by_inode.entry(inode).or_insert_with(|| NetnsTarget {
            label: unnamed_label(inode),
            handle,
            transient: true,
        });
    }
    by_inode.into_values().collect()
}

fn unnamed_label(inode: u64) -> String {
    if inode == INIT_NETNS_INODE {
        INIT_LABEL.to_string()
    } else {
        format!("ns-{inode}")
    }
}

/// The namespace inode (`net->ns.inum` in the kernel) of a namespace file such
/// as `/run/netns/NAME` or `/proc/PID/ns/net`: how eBPF counts join a series.
pub fn netns_inode(handle: &Path) -> Option<u32> {
    fs::metadata(handle)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// `net:[4026531833]` -> 4026531833
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Reads the stat file inside each namespace, in order, from one worker thread
/// that enters them in turn (entering a namespace only affects that thread).
pub fn read_in_namespaces(
    targets: &[NetnsTarget],
    proc_root: &Path,
) -> Vec<Result<Reading, NetnsError>> {
    let path = proc_root.join("thread-self").join(STAT_FILE);
    let joined = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns-reader".into())
            .spawn_scoped(scope, || {
                let mut buf = Vec::new();
                targets
                    .iter()
                    .map(|t| read_one(t, &path, &mut buf))
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
        Err(e) => targets
            .iter()
            .map(|_| Err(NetnsError::Thread(e.to_string())))
            .collect(),
    }
}

fn read_one(target: &NetnsTarget, path: &Path, buf: &mut Vec<u8>) -> Result<Reading, NetnsError> {
    let label = || target.label.clone();
    let ns = File::open(&target.handle).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetnsError::NotFound {
                label: label(),
                handle: target.handle.clone(),
            }
        } else {
            NetnsError::Open {
                label: label(),
                handle: target.handle.clone(),
                source,
            }
        }
    })?;
    // SAFETY: `ns` is an open file descriptor owned by this function; setns only
    // changes the calling (worker) thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            label: label(),
            source: io::Error::last_os_error(),
        });
    }
    read_stat_file(path, buf).map_err(|source| NetnsError::Read {
        label: label(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_link_parsing() {
        assert_eq!(parse_ns_link("net:[4026531833]"), Some(INIT_NETNS_INODE));
        assert_eq!(parse_ns_link("mnt:[4026531833]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn labels() {
        assert_eq!(unnamed_label(INIT_NETNS_INODE), "init");
        assert_eq!(unnamed_label(4026532282), "ns-4026532282");
    }

    #[test]
    fn missing_named_namespace_is_reported_with_its_path() {
        let targets = named_targets(&["nope".into()], Path::new("/nonexistent-netns-dir"));
        let results = read_in_namespaces(&targets, Path::new("/proc"));
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
    fn discovery_finds_our_own_namespace() {
        let own = fs::read_link("/proc/self/ns/net")
            .ok()
            .and_then(|l| parse_ns_link(&l.to_string_lossy()));
        let Some(own) = own else { return };
        let all = discover_all(Path::new("/proc"), Path::new("/nonexistent-netns-dir"));
        assert!(all.iter().any(|t| t.label == unnamed_label(own)), "{all:?}");
    }
}

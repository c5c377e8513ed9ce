//! Which network namespaces exist: named ones (`ip netns add`) and those of
//! running processes, each with a unique label.

use super::{NetnsTarget, INIT_LABEL, INIT_NETNS_INODE};
use crate::sources::proc::netns_label;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::proc::netns::own_identity;

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
}

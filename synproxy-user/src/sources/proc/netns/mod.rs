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

mod discover;
mod reader;
mod stack_reader;

pub use discover::{discover, discover_all, looks_generated, named_targets, Discovery};
pub use reader::{read_in_namespaces, read_own, NetnsReader, NsReading};
pub use stack_reader::{FileRead, NsStack, StackFile, StackReadError, StackReader};

use super::netns_label;
use super::proc_file::ReadError;
use std::fs;
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

//! Which of the namespaces `--netns all` discovered are tracked. Any user can
//! create network namespaces (`unshare -rn`: a new user namespace owning a new
//! network namespace), so discovery alone would let one user fill the eBPF
//! slots, the series and the outputs. By default a namespace found only
//! through a process is tracked when its owning user namespace is the
//! agent's own (the initial one on a host) or one above it; those owned by a
//! user namespace nested in the agent's are left out unless
//! `--netns-include-user-owned`. Named namespaces (`/run/netns`, created by
//! root) and the initial namespace are always candidates. At most
//! `--netns-max` are tracked: named ones first, then the initial namespace,
//! then those tracked in the previous round (so the set does not churn),
//! then the others by inode.

use super::netns::{NetnsTarget, INIT_NETNS_INODE};
use log::{debug, info, warn};
use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `--netns-max` default: well under the 2,048 eBPF slots, so every tracked
/// namespace is counted by eBPF.
pub const DEFAULT_MAX_NAMESPACES: usize = 1024;
/// `--netns-max` bounds.
pub const MIN_MAX_NAMESPACES: usize = 1;
pub const MAX_MAX_NAMESPACES: usize = 16_384;

/// `--netns all`'s limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsPolicy {
    /// At most this many namespaces are tracked (`--netns-max`).
    pub max: usize,
    /// Also namespaces owned by nested user namespaces (`--netns-include-user-owned`).
    pub include_user_owned: bool,
}

impl Default for NetnsPolicy {
    fn default() -> Self {
        Self {
            max: DEFAULT_MAX_NAMESPACES,
            include_user_owned: false,
        }
    }
}

/// Who owns a namespace, as far as the agent can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The agent's user namespace, or one above it (the kernel refuses to
    /// name an owner above the caller's), or unknown (no NS_GET_USERNS).
    Trusted,
    /// A user namespace nested in the agent's: any user can make one.
    Nested,
    /// The handle no longer refers to the namespace discovered (the process
    /// exited): not a candidate this round.
    Gone,
}

/// `NS_GET_USERNS`: `_IO(0xb7, 0x1)`.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The (device, inode) of the agent's user namespace.
pub fn own_user_ns(proc_root: &Path) -> Option<(u64, u64)> {
    [proc_root.join("self/ns/user"), "/proc/self/ns/user".into()]
        .iter()
        .find_map(|p| fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
}

/// Who owns the network namespace `target` refers to.
pub fn owner(target: &NetnsTarget, own_user_ns: Option<(u64, u64)>) -> Owner {
    let Ok(ns) = File::open(&target.handle) else {
        return Owner::Gone;
    };
    match ns.metadata() {
        Ok(m) if target.expected.is_none_or(|e| e == (m.dev(), m.ino())) => {}
        _ => return Owner::Gone,
    }
    // SAFETY: `ns` is an open descriptor; NS_GET_USERNS takes no argument and
    // returns a new descriptor (owned below) or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        // EPERM: the owner is above the agent's user namespace.
        return Owner::Trusted;
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let user_ns = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    match (user_ns.metadata(), own_user_ns) {
        (Ok(m), Some(own)) if (m.dev(), m.ino()) != own => Owner::Nested,
        _ => Owner::Trusted,
    }
}

/// Where a candidate ranks under the cap (lower first).
fn rank(target: &NetnsTarget, tracked: &HashSet<(u64, u64)>) -> (bool, bool, u64, u64) {
    let (dev, inode) = target.expected.unwrap_or_default();
    let first = !target.transient || inode == INIT_NETNS_INODE;
    (!first, !tracked.contains(&(dev, inode)), dev, inode)
}

/// What one round's selection left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// Owned by nested user namespaces (without `--netns-include-user-owned`).
    pub user_owned: usize,
    /// Beyond `--netns-max`.
    pub over_cap: usize,
}

/// Picks the namespaces to track from `found` (discovery's order kept);
/// `owner_of` tells who owns an unnamed one; `tracked`: the (device, inode)
/// of those tracked in the previous round.
pub fn select(
    found: Vec<NetnsTarget>,
    policy: &NetnsPolicy,
    tracked: &HashSet<(u64, u64)>,
    owner_of: &dyn Fn(&NetnsTarget) -> Owner,
) -> (Vec<NetnsTarget>, Left) {
    let mut left = Left::default();
    let mut candidates: Vec<(usize, (bool, bool, u64, u64))> = Vec::with_capacity(found.len());
    for (i, target) in found.iter().enumerate() {
        let named = !target.transient;
        let owner = if named || policy.include_user_owned {
            Owner::Trusted
        } else {
            owner_of(target)
        };
        match owner {
            Owner::Gone => continue,
            Owner::Nested => {
                left.user_owned += 1;
                continue;
            }
            Owner::Trusted => candidates.push((i, rank(target, tracked))),
        }
    }
    if candidates.len() > policy.max {
        candidates.sort_by_key(|&(_, rank)| rank);
        left.over_cap = candidates.len() - policy.max;
        candidates.truncate(policy.max);
        candidates.sort_by_key(|&(i, _)| i);
    }
    let chosen: HashSet<usize> = candidates.into_iter().map(|(i, _)| i).collect();
    let targets = found
        .into_iter()
        .enumerate()
        .filter(|(i, _)| chosen.contains(i))
        .map(|(_, t)| t)
        .collect();
    (targets, left)
}

/// Logs a count of left-out namespaces when it starts, each time it has
/// doubled since the last line, and when it ends: a few lines whatever the
/// churn, never one per round.
#[derive(Debug, Default)]
struct Notice {
    /// The count last logged (0: none left out).
    logged: usize,
}

impl Notice {
    /// The count to log now, if any (`Some(0)`: it ended).
    fn update(&mut self, count: usize) -> Option<usize> {
        let log = match (self.logged, count) {
            (0, 0) => false,
            (_, 0) => true,
            (0, _) => true,
            (last, now) => now >= last.saturating_mul(2),
        };
        if log {
            self.logged = count;
        }
        log.then_some(count)
    }
}

/// [`select`] each round, with the state it needs and its log lines.
#[derive(Debug)]
pub struct Selector {
    policy: NetnsPolicy,
    own_user_ns: Option<(u64, u64)>,
    tracked: HashSet<(u64, u64)>,
    over_cap: Notice,
    user_owned: Notice,
}

impl Selector {
    pub fn new(policy: NetnsPolicy, proc_root: &Path) -> Self {
        Self {
            policy,
            own_user_ns: own_user_ns(proc_root),
            tracked: HashSet::new(),
            over_cap: Notice::default(),
            user_owned: Notice::default(),
        }
    }

    pub fn policy(&self) -> &NetnsPolicy {
        &self.policy
    }

    /// This round's namespaces to track, out of those discovered.
    pub fn select(&mut self, found: Vec<NetnsTarget>) -> Vec<NetnsTarget> {
        let own = self.own_user_ns;
        let total = found.len();
        let (targets, left) = select(found, &self.policy, &self.tracked, &|t| owner(t, own));
        self.tracked = targets.iter().filter_map(|t| t.expected).collect();
        debug!(
            "--netns all: {total} namespaces found, {} tracked, {} owned by nested user namespaces, {} over --netns-max",
            targets.len(),
            left.user_owned,
            left.over_cap
        );
        match self.user_owned.update(left.user_owned) {
            Some(0) => info!("--netns all: no namespace owned by a nested user namespace any more"),
            Some(n) => info!(
                "--netns all: {n} namespaces owned by nested user namespaces (unprivileged users' `unshare -rn`) are not tracked; --netns-include-user-owned tracks them"
            ),
            None => {}
        }
        match self.over_cap.update(left.over_cap) {
            Some(0) => info!("--netns all: every namespace is tracked again (at most {} by --netns-max)", self.policy.max),
            Some(n) => warn!(
                "--netns all: {n} of {} namespaces left out, not reported: at most {} are tracked (--netns-max; named ones first)",
                targets.len() + n,
                self.policy.max
            ),
            None => {}
        }
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn target(label: &str, inode: u64, named: bool) -> NetnsTarget {
        NetnsTarget {
            label: label.into(),
            handle: PathBuf::from(format!("/nonexistent/{label}")),
            transient: !named,
            expected: Some((4, inode)),
        }
    }

    fn labels(t: &[NetnsTarget]) -> Vec<&str> {
        t.iter().map(|t| t.label.as_str()).collect()
    }

    /// Discovery's order: named, then unnamed by inode.
    fn found(anonymous: u64) -> Vec<NetnsTarget> {
        let mut v = vec![target("blue", 5000, true), target("red", 5001, true)];
        v.push(target("init", INIT_NETNS_INODE, false));
        v.extend((0..anonymous).map(|i| target(&format!("ns-{}", 6000 + i), 6000 + i, false)));
        v
    }

    /// Unnamed ones with an even inode are owned by nested user namespaces.
    fn owner_by_parity(t: &NetnsTarget) -> Owner {
        match t.expected {
            Some((_, ino)) if ino != INIT_NETNS_INODE && ino % 2 == 0 => Owner::Nested,
            _ => Owner::Trusted,
        }
    }

    #[test]
    fn user_owned_ones_are_left_out_by_default() {
        let policy = NetnsPolicy::default();
        let (t, left) = select(found(4), &policy, &HashSet::new(), &owner_by_parity);
        assert_eq!(labels(&t), ["blue", "red", "init", "ns-6001", "ns-6003"]);
        assert_eq!(
            left,
            Left {
                user_owned: 2,
                over_cap: 0
            }
        );
        let with = NetnsPolicy {
            include_user_owned: true,
            ..policy
        };
        let (t, left) = select(found(4), &with, &HashSet::new(), &|_| unreachable!());
        assert_eq!(t.len(), 7);
        assert_eq!(left, Left::default());
    }

    #[test]
    fn gone_ones_are_not_candidates() {
        let (t, left) = select(found(2), &NetnsPolicy::default(), &HashSet::new(), &|t| {
            if t.transient && t.expected != Some((4, INIT_NETNS_INODE)) {
                Owner::Gone
            } else {
                Owner::Trusted
            }
        });
        assert_eq!(labels(&t), ["blue", "red", "init"]);
        assert_eq!(left, Left::default());
    }

    #[test]
    fn the_cap_keeps_named_then_init_then_tracked_then_by_inode() {
        let policy = NetnsPolicy {
            max: 5,
            include_user_owned: true,
        };
        let (t, left) = select(found(3000), &policy, &HashSet::new(), &owner_by_parity);
        assert_eq!(labels(&t), ["blue", "red", "init", "ns-6000", "ns-6001"]);
        assert_eq!(left.over_cap, 2998);
        // Those tracked in the previous round stay ahead of lower inodes.
        let tracked: HashSet<(u64, u64)> = [(4, 8000), (4, 8999)].into();
        let (t, _) = select(found(3000), &policy, &tracked, &owner_by_parity);
        assert_eq!(labels(&t), ["blue", "red", "init", "ns-8000", "ns-8999"]);
        // Named ones beyond the cap: in label order, still first.
        let tiny = NetnsPolicy { max: 1, ..policy };
        let (t, left) = select(found(10), &tiny, &HashSet::new(), &owner_by_parity);
        assert_eq!(labels(&t), ["blue"]);
        assert_eq!(left.over_cap, 12);
    }

    #[test]
    fn notices_are_rate_limited() {
        let mut n = Notice::default();
        assert_eq!(n.update(0), None);
        assert_eq!(n.update(10), Some(10));
        for count in [11, 12, 19, 15, 10, 3] {
            assert_eq!(n.update(count), None, "{count}");
        }
        assert_eq!(n.update(20), Some(20));
        assert_eq!(n.update(39), None);
        assert_eq!(n.update(0), Some(0));
        assert_eq!(n.update(0), None);
        assert_eq!(n.update(1), Some(1));
    }

    /// The real check on this host: our own namespace is trusted; a
    /// namespace made by `unshare -rn` (as a child here) is nested.
    #[test]
    fn owner_of_real_namespaces() {
        let own = own_user_ns(Path::new("/proc"));
        let ours = NetnsTarget {
            label: "self".into(),
            handle: "/proc/self/ns/net".into(),
            transient: true,
            expected: None,
        };
        assert_eq!(owner(&ours, own), Owner::Trusted);
        let gone = NetnsTarget {
            handle: "/nonexistent/ns".into(),
            ..ours.clone()
        };
        assert_eq!(owner(&gone, own), Owner::Gone);
        // A child in a new user namespace owning a new network namespace.
        let mut child = std::process::Command::new("unshare")
            .args(["-rn", "sleep", "30"])
            .spawn()
            .expect("unshare (util-linux)");
        let nested = NetnsTarget {
            handle: PathBuf::from(format!("/proc/{}/ns/net", child.id())),
            ..ours.clone()
        };
        // It is in ours until it has unshared.
        let inode = |p: &Path| fs::metadata(p).map(|m| m.ino()).ok();
        let own_net = inode(Path::new("/proc/self/ns/net"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while inode(&nested.handle) == own_net && std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("unshare -rn exited with {status} (no user namespaces here?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let got = owner(&nested, own);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Owner::Nested);
    }
}

//! Types shared by the kernel-side programs and the agent.
//!
//! Everything here is `#[repr(C)]` and `no_std` so that the eBPF crate and the
//! agent read the same bytes the same way. The `user` feature adds the
//! `aya::Pod` impls the agent needs to read the maps.
#![no_std]

/// The SYNPROXY counters in the order the kernel prints them in
/// `/proc/net/stat/synproxy` (after the constant `entries` column).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    SynReceived = 0,
    CookieInvalid = 1,
    CookieValid = 2,
    CookieRetrans = 3,
    ConnReopened = 4,
}

/// Number of event counters the kernel keeps per CPU (`struct synproxy_stats`).
pub const COUNTER_COUNT: usize = 5;

impl Counter {
    /// Kernel print order (also the `u8` stored in map keys).
    pub const ALL: [Counter; COUNTER_COUNT] = [
        Counter::SynReceived,
        Counter::CookieInvalid,
        Counter::CookieValid,
        Counter::CookieRetrans,
        Counter::ConnReopened,
    ];

    pub const fn from_u8(v: u8) -> Option<Counter> {
        match v {
            0 => Some(Counter::SynReceived),
            1 => Some(Counter::CookieInvalid),
            2 => Some(Counter::CookieValid),
            3 => Some(Counter::CookieRetrans),
            4 => Some(Counter::ConnReopened),
            _ => None,
        }
    }

    /// The name the kernel prints in the header, Telegraf's field name.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SynReceived => "syn_received",
            Counter::CookieInvalid => "cookie_invalid",
            Counter::CookieValid => "cookie_valid",
            Counter::CookieRetrans => "cookie_retrans",
            Counter::ConnReopened => "conn_reopened",
        }
    }

    /// The counter called `name` (as [`Counter::name`] spells it).
    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Index in [`Counter::ALL`] (kernel order).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The constant first column of `/proc/net/stat/synproxy` (always 0 since Linux 3.12);
/// Telegraf reports it as a field.
pub const ENTRIES: &str = "entries";

/// Column names of `/proc/net/stat/synproxy` in the kernel's order.
pub const STAT_COLUMNS: [&str; COUNTER_COUNT + 1] = [
    ENTRIES,
    Counter::SynReceived.name(),
    Counter::CookieInvalid.name(),
    Counter::CookieValid.name(),
    Counter::CookieRetrans.name(),
    Counter::ConnReopened.name(),
];

const _: () = assert!(core::mem::size_of::<CountKey>() == 16);
const _: () = assert!(core::mem::size_of::<RateKey>() == 24);

/// Address family of an event, as stored in map keys.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Key of the `COUNTS` per-CPU hash: one u64 per CPU per key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    /// `net->ns.inum`: the inode number of the network namespace.
    pub netns: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// [`Counter`] as u8.
    pub counter: u8,
    pub _pad: [u8; 2],
    /// `net->net_cookie` (never reused, unlike inode numbers), or 0 where the
    /// agent cannot read cookies (kernels before 5.14).
    pub cookie: u64,
}

/// Key of the `RATES` per-CPU hash: events of one counter in one time bucket
/// (`bpf_ktime_get_ns() / RATE_RES_NS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateKey {
    pub count: CountKey,
    pub bucket: u64,
}

/// Per-CPU stash between `synproxy_recv_client_ack[_ipv6]` entry and return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AckStash {
    /// `net->net_cookie` (0 when not read).
    pub cookie: u64,
    pub netns: u32,
    pub recv_seq: u32,
    /// `ntohl(th->seq)`
    pub seq: u32,
    pub family: u8,
    /// 1 while an entry is waiting for its return.
    pub armed: u8,
    pub _pad: [u8; 2],
}

/// Per-CPU stash set at `ipv4_synproxy_hook`/`ipv6_synproxy_hook` entry and read by
/// `nf_ct_seqadj_init` (conn_reopened).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HookStash {
    /// `skb->_nfct & ~7`: the conntrack entry the hook works on.
    pub ct: u64,
    pub cookie: u64,
    pub netns: u32,
    pub family: u8,
    pub armed: u8,
    pub _pad: [u8; 2],
}

/// Slots of the `DIAG` per-CPU array: kernel-side anomalies, each a u64 per CPU.
pub mod diag {
    /// `COUNTS` was full: an event was not counted (also recorded per namespace
    /// in `LOST` while that has room).
    pub const COUNT_MAP_FULL: u32 = 0;
    /// `RATES` was full: an event is missing from the peak rates only.
    pub const RATE_MAP_FULL: u32 = 1;
    /// A `synproxy_recv_client_ack` return without its entry (entry probe missed).
    pub const ACK_RETURN_UNMATCHED: u32 = 2;
    /// `nf_ct_seqadj_init(ct, ctinfo, 0)` in the original direction outside a
    /// synproxy hook (not counted).
    pub const SEQADJ_UNMATCHED: u32 = 3;
    /// A kernel read (`bpf_probe_read_kernel`) failed: the event was counted
    /// under netns 0.
    pub const READ_FAILED: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Capacity of the `COUNTS` map (at most 10 keys per namespace with events;
/// keys of namespaces the agent no longer reports are pruned every round).
pub const COUNTS_MAX_ENTRIES: u32 = 8192;
/// Capacity of the `LOST` map: per key, events `COUNTS` had no room for.
pub const LOST_MAX_ENTRIES: u32 = 1024;
/// Capacity of the `RATES` map. The agent drains completed buckets at least
/// every [`RATE_DRAIN_BUCKETS`] buckets, so it holds at most that many (+2 open)
/// per active key: room for 1600 active keys.
pub const RATES_MAX_ENTRIES: u32 = 16384;
/// How many rate buckets may complete between two drains of `RATES`.
pub const RATE_DRAIN_BUCKETS: u32 = 8;

/// Names of the globals the agent sets at load time.
pub mod globals {
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub const NET_INUM_OFFSET: &str = "NET_INUM_OFFSET";
    /// `offsetof(struct nf_hook_state, net)`.
    pub const HOOK_STATE_NET_OFFSET: &str = "HOOK_STATE_NET_OFFSET";
    /// `offsetof(struct net, net_cookie)`, or `u32::MAX` to leave cookies 0.
    pub const NET_COOKIE_OFFSET: &str = "NET_COOKIE_OFFSET";
    /// `offsetof(struct sk_buff, _nfct)`.
    pub const SKB_NFCT_OFFSET: &str = "SKB_NFCT_OFFSET";
    /// Width of one peak-rate bucket in nanoseconds.
    pub const RATE_RES_NS: &str = "RATE_RES_NS";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding fields: every bit
    // pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::CountKey {}
    // SAFETY: as above (CountKey is 16 bytes, so the u64 field is 8-aligned).
    unsafe impl aya::Pod for super::RateKey {}
}

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

const _: () = assert!(core::mem::size_of::<NsEntry>() == 16);
const _: () = assert!(core::mem::size_of::<NsStats>().is_multiple_of(8));

/// Address family of an event, as the programs see it.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

// Counts and peak-rate buckets live in memory-mapped arrays that the agent
// reads without system calls: while a CPU is inside a BPF map syscall the
// kernel skips every kprobe program on that CPU, so reading maps by syscall
// would make the agent itself lose events of packets handled there then.
//
// A namespace the agent tracks gets a slot in `NS_STATS`; `NS_TABLE` (open
// addressing, written only by the agent) maps (netns inode, netns cookie) to
// it. Events of a namespace without a slot only count in `diag::UNTRACKED`.

/// Slots of `NS_STATS`: namespaces the agent can follow at once.
pub const NS_SLOTS: u32 = 2048;
/// Entries of `NS_TABLE` (a power of two, twice [`NS_SLOTS`]).
pub const NS_TABLE_ENTRIES: u32 = 4096;
/// How many consecutive `NS_TABLE` entries a lookup inspects at most.
pub const NS_TABLE_PROBES: u32 = 16;
/// [`NsEntry::word`] of an entry never used: a lookup stops there.
pub const NS_ENTRY_EMPTY: u64 = 0;
/// [`NsEntry::word`] of an entry whose namespace was released: a lookup goes
/// on past it (inode 1 is never a namespace's).
pub const NS_ENTRY_FREED: u64 = 1;

/// One `NS_TABLE` entry. The agent writes `cookie` first and then `word` in
/// one 64-bit store, so a lookup that matches `word` reads a slot and inode
/// that belong together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsEntry {
    /// `net->ns.inum` in the low 32 bits, the slot in the high 32 bits; or
    /// [`NS_ENTRY_EMPTY`] / [`NS_ENTRY_FREED`].
    pub word: u64,
    /// `net->net_cookie` (never reused, unlike inode numbers), or 0 where the
    /// agent cannot read cookies (kernels before 5.14).
    pub cookie: u64,
}

impl NsEntry {
    pub const fn word(inum: u32, slot: u32) -> u64 {
        (inum as u64) | ((slot as u64) << 32)
    }
}

/// The key's first half where namespaces have cookies: the programs then read
/// only `net->net_cookie` (one kernel read per event instead of two; a cookie
/// is never reused, so it identifies the namespace alone) and both sides use
/// this stand-in for the inode (never 0 or 1, which mean "no namespace").
#[inline(always)]
pub fn cookie_key(cookie: u64) -> u32 {
    (cookie ^ (cookie >> 32)) as u32 | 2
}

/// The first `NS_TABLE` entry a lookup of (inum, cookie) inspects.
#[inline(always)]
pub fn ns_table_home(inum: u32, cookie: u64) -> u32 {
    let mixed = ((inum as u64) ^ cookie.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) as u32) & (NS_TABLE_ENTRIES - 1)
}

/// Buckets per counter in a slot's peak-rate ring (a power of two).
pub const RATE_RING: u32 = 16;
/// How many rate buckets may complete between two drains by the agent; the
/// rest of the ring is slack for a late drain.
pub const RATE_DRAIN_BUCKETS: u32 = 8;

/// One slot of `NS_STATS`: one namespace's counts and peak-rate ring. The
/// programs only add to it, atomically (all CPUs share it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NsStats {
    /// Events per family (0 = IPv4, 1 = IPv6) and counter since the slot was
    /// given to the namespace.
    pub counts: [[u64; COUNTER_COUNT]; 2],
    /// Events per family and counter of rate bucket `b` (`bpf_ktime_get_ns() /
    /// RATE_RES_NS`) at index `b % RATE_RING`, counted while
    /// `RATE_TAGS[b % RATE_RING] == b`; the agent reads and zeroes completed
    /// buckets and moves their tags on.
    pub rates: [[[u32; RATE_RING as usize]; COUNTER_COUNT]; 2],
}

/// A slot's size in u64 words; its counts are the first `2 * COUNTER_COUNT`.
pub const NS_STATS_U64S: usize = core::mem::size_of::<NsStats>() / 8;
/// A slot's size in u32 words.
pub const NS_STATS_U32S: usize = core::mem::size_of::<NsStats>() / 4;
/// Where a slot's rate buckets start, in u32 words.
pub const NS_STATS_RATES_U32: usize = 2 * COUNTER_COUNT * 2;

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
    /// 1 when `source` holds the client's address (per-source counting on
    /// and the packet's IP header read).
    pub has_source: u8,
    /// 1 when `port` holds the destination port (per-port counting on).
    pub has_port: u8,
    /// The client's address as in [`SourceKey::addr`].
    pub source: [u64; 2],
    /// `th->dest` as in [`PortKey::port`].
    pub port: u16,
    pub _pad: [u8; 6],
}

// Per-source counting (`--top`): the agent's table of (namespace, counter,
// family, address) -> events, filled from the programs' event log (below).

/// Default entries of the table of sources (`--top-map-entries`): a botnet of
/// 65,536 sources per counter fits.
pub const SOURCES_DEFAULT_ENTRIES: u32 = 65_536;

/// Key of the table of sources.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The namespace as `NS_TABLE` keys it: cookie (0 before 5.14) ...
    pub cookie: u64,
    /// ... and inode (or [`cookie_key`] of the cookie).
    pub netns: u32,
    /// [`Counter`] as u8: syn_received, cookie_invalid or cookie_valid.
    pub counter: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: [u8; 2],
    /// The client's address in network byte order, as it is in the packet
    /// (IPv4: the first 4 bytes, the rest 0). Two u64 words, not 16 bytes:
    /// the programs copy it with two moves instead of a byte loop.
    pub addr: [u64; 2],
}

/// Value of an entry of the tables of sources and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceValue {
    /// Events since the entry was created.
    pub events: u64,
    /// When the entry was created (a stamp the table increments): an entry
    /// evicted and created again has another, so a reader does not take its
    /// restart from 0 for a drop.
    pub born: u64,
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 32);

// Per-port counting (`--top-ports`): the same for (namespace, counter,
// family, destination port). Ports are few (the protected services), so the
// table is small and rarely evicts.

/// Default entries of the table of ports (`--top-ports-map-entries`).
pub const PORTS_DEFAULT_ENTRIES: u32 = 4096;

/// Key of the table of ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The namespace as `NS_TABLE` keys it, as in [`SourceKey`].
    pub cookie: u64,
    pub netns: u32,
    /// [`Counter`] as u8: syn_received, cookie_invalid or cookie_valid.
    pub counter: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// The client's destination port (`th->dest`) as it is in the packet
    /// (network byte order): `u16::from_be` gives the port.
    pub port: u16,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 16);
const _: () = assert!(core::mem::size_of::<AckStash>() == 48);

// Per-source and per-port counting goes through an event log: for each
// syn_received, cookie_invalid and cookie_valid event the programs append one
// record (namespace, counter, family, destination port, client address) to
// their CPU's ring in the memory-mapped `EVENT_LOG`, and the agent drains the
// rings between rounds into its own tables of sources and ports. A write is a
// few stores (no hashing, no lock: one writer per ring, as the programs run
// with bottom halves off and do not nest), where a hash-map update hashes the
// key and walks a bucket. A full ring drops the record (counted per CPU); the
// event still counts in the totals.

/// Records per CPU ring (a power of two) at most: what machines of up to 4
/// CPUs get.
pub const LOG_DEFAULT_PER_CPU: u32 = 65_536;

/// One record of `EVENT_LOG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The namespace as `NS_TABLE` keys it, as in [`SourceKey`].
    pub cookie: u64,
    // netns, counter, family and port: one word, see [`logged_meta`].
    pub netns: u32,
    /// [`Counter`] as u8.
    pub counter: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// The destination port as in the packet (network order), with
    /// [`LOGGED_PORT`].
    pub port: u16,
    /// The client's address as in [`SourceKey::addr`], with [`LOGGED_SOURCE`].
    pub addr: [u64; 2],
    /// Written last: the low 32 bits are the record's position in its ring
    /// plus one (truncated), so the agent takes a record only once it is
    /// whole; the high bits say which fields hold a value.
    pub seq: u64,
}

/// The second word of a [`LoggedEvent`] as the programs store it (one u64:
/// the agent reads it back with [`logged_meta_fields`], whatever the byte
/// order).
pub const fn logged_meta(netns: u32, counter: u8, family: u8, port: u16) -> u64 {
    netns as u64 | (counter as u64) << 32 | (family as u64) << 40 | (port as u64) << 48
}

/// (netns, counter, family, port) of a [`logged_meta`] word.
pub const fn logged_meta_fields(meta: u64) -> (u32, u8, u8, u16) {
    (
        meta as u32,
        (meta >> 32) as u8,
        (meta >> 40) as u8,
        (meta >> 48) as u16,
    )
}

/// [`LoggedEvent::seq`]: `addr` holds the client's address.
pub const LOGGED_SOURCE: u64 = 1 << 32;
/// [`LoggedEvent::seq`]: `port` holds the destination port.
pub const LOGGED_PORT: u64 = 2 << 32;
/// u64 words of a [`LoggedEvent`].
pub const LOGGED_EVENT_WORDS: usize = 5;
const _: () = assert!(core::mem::size_of::<LoggedEvent>() == LOGGED_EVENT_WORDS * 8);

/// One CPU's entry of `LOG_POS` (memory-mapped): the ring's positions, the
/// programs' words and the agent's in two cache lines, so that their stores
/// do not share one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPos {
    /// Records written since load (the programs; the next one goes at
    /// `head % len`).
    pub head: u64,
    /// Records dropped since load because the ring was full (the programs).
    pub dropped: u64,
    pub _pad: [u64; 6],
    /// Records the agent has read (the agent).
    pub tail: u64,
    pub _pad2: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<LogPos>() == log_pos::STRIDE as usize * 8);
const _: () = assert!(core::mem::offset_of!(LogPos, head) == log_pos::HEAD as usize * 8);
const _: () = assert!(core::mem::offset_of!(LogPos, dropped) == log_pos::DROPPED as usize * 8);
const _: () = assert!(core::mem::offset_of!(LogPos, tail) == log_pos::TAIL as usize * 8);

/// The words of [`LogPos`] as the agent maps them (u64s).
pub mod log_pos {
    pub const STRIDE: u32 = 16;
    /// Records written since load (the programs; the next one goes at
    /// `HEAD % len`).
    pub const HEAD: u32 = 0;
    /// Records dropped since load because the ring was full (the programs).
    pub const DROPPED: u32 = 1;
    /// Records the agent has read (the agent).
    pub const TAIL: u32 = 8;
}

/// Slots of the `DIAG` array (memory-mapped, atomic adds): kernel-side
/// anomalies, totals since load.
pub mod diag {
    /// Events of namespaces without a slot: namespaces the agent does not
    /// track, and events before the agent first read a new namespace (its
    /// offset covers those). Not a loss.
    pub const UNTRACKED: u32 = 0;
    /// Events missing from the peak rates only: the agent had not moved
    /// their bucket's tag on yet (it drained late).
    pub const RATE_LATE: u32 = 1;
    /// A `synproxy_recv_client_ack` return without its entry (entry probe missed).
    pub const ACK_RETURN_UNMATCHED: u32 = 2;
    /// A kernel read (`bpf_probe_read_kernel`) failed: the event's namespace
    /// is unknown and it was not counted.
    pub const READ_FAILED: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Names of the globals the agent sets at load time.
pub mod globals {
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub const NET_INUM_OFFSET: &str = "NET_INUM_OFFSET";
    /// `offsetof(struct nf_conn, ct_net)`: the conntrack entry's namespace.
    pub const CT_NET_OFFSET: &str = "CT_NET_OFFSET";
    /// Offset of `ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.l3num` (the
    /// entry's address family) in `struct nf_conn`.
    pub const CT_L3NUM_OFFSET: &str = "CT_L3NUM_OFFSET";
    /// `offsetof(struct net, net_cookie)`, or `u32::MAX` to leave cookies 0.
    pub const NET_COOKIE_OFFSET: &str = "NET_COOKIE_OFFSET";
    /// Width of one peak-rate bucket in nanoseconds.
    pub const RATE_RES_NS: &str = "RATE_RES_NS";
    /// 1 to count per source (`--top` N > 0), else 0.
    pub const COUNT_SOURCES: &str = "COUNT_SOURCES";
    /// 1 to count per destination port (`--top-ports` N > 0), else 0.
    pub const COUNT_PORTS: &str = "COUNT_PORTS";
    /// Records per CPU ring of `EVENT_LOG` (a power of two), or 0 when
    /// nothing is logged (`--top 0 --top-ports 0`).
    pub const LOG_LEN: &str = "LOG_LEN";
    /// `offsetof(struct sk_buff, head)`.
    pub const SKB_HEAD_OFFSET: &str = "SKB_HEAD_OFFSET";
    /// `offsetof(struct sk_buff, network_header)` (a u16 offset from `head`).
    pub const SKB_NETWORK_HEADER_OFFSET: &str = "SKB_NETWORK_HEADER_OFFSET";
}

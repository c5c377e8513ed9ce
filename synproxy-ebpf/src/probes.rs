//! The probe set (docs/ebpf.md, "How the events are counted"):
//!
//! | probe | counts |
//! |---|---|
//! | kprobe `synproxy_send_client_synack[_ipv6]` | syn_received |
//! | kprobe `synproxy_recv_client_ack[_ipv6]` (stash) + kretprobe | cookie_valid / cookie_invalid, and cookie_retrans when valid and `recv_seq == ntohl(th->seq) + 1` |
//! | kprobe `nf_ct_seqadj_init` | conn_reopened (`off == 0`, original direction: only the synproxy hooks' reopen path calls it so; namespace and family from the conntrack entry) |
//!
//! The same set as fentry/fexit programs (`spxf_*`, `--probes fentry`): the
//! same functions and the same counting code; an fexit program sees the
//! arguments and the return value at once, so `synproxy_recv_client_ack[_ipv6]`
//! needs no entry program and no stash there (one fexit program per function).
//!
//! With `--top` N > 0 (global `COUNT_SOURCES`) or `--top-ports` N > 0
//! (`COUNT_PORTS`), each syn_received, cookie_invalid and cookie_valid event
//! is also logged with its client address and destination port in its CPU's
//! ring of `EVENT_LOG`, which the agent drains into its per-source and
//! per-port tables.
//!
//! Struct offsets come from the kernel's BTF through globals set by the agent.
//! Counts go to the slot of the event's namespace in a memory-mapped array
//! (atomic adds, no per-event output) that the agent reads without syscalls;
//! kernel-side anomalies are counted in `DIAG`, which the agent reports once
//! per interval.

use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, PerCpuArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
    Global,
};
use synproxy_common::{
    cookie_key, diag, logged_meta, ns_table_home, AckStash, Counter, LogPos, LoggedEvent, NsEntry,
    NsStats, FAMILY_IPV4, FAMILY_IPV6, LOGGED_PORT, LOGGED_SOURCE, NS_ENTRY_EMPTY, NS_SLOTS,
    NS_TABLE_ENTRIES, NS_TABLE_PROBES, RATE_RING,
};

#[no_mangle]
static NET_INUM_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static CT_NET_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static CT_L3NUM_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static NET_COOKIE_OFFSET: Global<u32> = Global::new(u32::MAX);
#[no_mangle]
static RATE_RES_NS: Global<u64> = Global::new(100_000_000);
#[no_mangle]
static COUNT_SOURCES: Global<u32> = Global::new(0);
#[no_mangle]
static COUNT_PORTS: Global<u32> = Global::new(0);
#[no_mangle]
static LOG_LEN: Global<u32> = Global::new(0);
#[no_mangle]
static SKB_HEAD_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static SKB_NETWORK_HEADER_OFFSET: Global<u32> = Global::new(0);

const MMAPABLE: u32 = BPF_F_MMAPABLE as u32;

/// (netns inode, cookie) -> slot, written by the agent.
#[map]
static NS_TABLE: Array<NsEntry> = Array::with_max_entries(NS_TABLE_ENTRIES, MMAPABLE);
/// Per slot: counts and peak-rate buckets.
#[map]
static NS_STATS: Array<NsStats> = Array::with_max_entries(NS_SLOTS, MMAPABLE);
/// Per rate-ring index: the bucket it currently counts, set by the agent.
#[map]
static RATE_TAGS: Array<u64> = Array::with_max_entries(RATE_RING, MMAPABLE);
#[map]
static DIAG: Array<u64> = Array::with_max_entries(diag::COUNT, MMAPABLE);
#[map]
static ACK_STASH: PerCpuArray<AckStash> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU a ring of `LOG_LEN` records (sized by the agent; 1 entry when
/// nothing is logged).
#[map]
static EVENT_LOG: Array<LoggedEvent> = Array::with_max_entries(1, MMAPABLE);
/// Per CPU the ring's positions and drops.
#[map]
static LOG_POS: Array<LogPos> = Array::with_max_entries(1, MMAPABLE);

/// `IP_CT_IS_REPLY`: ctinfo values below it are the original direction.
const IP_CT_IS_REPLY: u64 = 3;
const AF_INET6: u16 = 10;

/// Adds one to a u64 that other CPUs and the agent share.
#[inline(always)]
fn add_u64(p: *mut u64) {
    // SAFETY: `p` points into an array map value (8-aligned, lives as long as
    // the map); every writer uses atomic operations on it. The result is
    // unused, so this is BPF_XADD, which every kernel the agent supports has
    // (core's atomic types offer no read-modify-write on this target).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
}

#[inline(always)]
fn add_u32(p: *mut u32) {
    // SAFETY: as in add_u64 (4-aligned).
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, 1) };
}

#[inline(always)]
fn diag_inc(slot: u32) {
    if let Some(p) = DIAG.get_ptr_mut(slot) {
        add_u64(p);
    }
}

/// Identity of a network namespace as the maps key it.
#[derive(Clone, Copy)]
struct Netns {
    inum: u32,
    cookie: u64,
}

/// The namespace's slot in `NS_STATS`, if the agent gave it one.
#[inline(always)]
fn slot_of(ns: Netns) -> Option<u32> {
    if ns.inum <= 1 {
        return None;
    }
    let home = ns_table_home(ns.inum, ns.cookie);
    let wanted = ns.inum as u64;
    for i in 0..NS_TABLE_PROBES {
        let entry = NS_TABLE.get_ptr((home + i) & (NS_TABLE_ENTRIES - 1))?;
        // SAFETY: an array map value; the agent writes it concurrently with
        // single aligned stores, so a volatile read sees one of them whole.
        let word = unsafe { read_volatile(addr_of!((*entry).word)) };
        if word == NS_ENTRY_EMPTY {
            return None;
        }
        if word & 0xffff_ffff == wanted {
            // SAFETY: as above.
            let cookie = unsafe { read_volatile(addr_of!((*entry).cookie)) };
            if cookie == ns.cookie {
                return Some((word >> 32) as u32);
            }
        }
    }
    None
}

/// Appends the event's detail to this CPU's ring of `EVENT_LOG`, or counts
/// it dropped when the agent has not read the ring far enough.
#[inline(always)]
fn log_event(ns: Netns, family: u8, counter: Counter, detail: Detail) {
    let len = LOG_LEN.load();
    if len == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(pos) = LOG_POS.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: this CPU's value of LOG_POS: `head` and `dropped` have one
    // writer (this CPU, whose programs do not nest), `tail` is the agent's,
    // stored whole.
    let (head_p, head, tail) = unsafe {
        let head_p = addr_of_mut!((*pos).head);
        (
            head_p,
            read_volatile(head_p),
            read_volatile(addr_of!((*pos).tail)),
        )
    };
    if head.wrapping_sub(tail) >= u64::from(len) {
        // SAFETY: as above, one writer.
        unsafe {
            let dropped = addr_of_mut!((*pos).dropped);
            write_volatile(dropped, read_volatile(dropped) + 1);
        }
        return;
    }
    let idx = cpu.wrapping_mul(len) + (head as u32 & (len - 1));
    let Some(rec) = EVENT_LOG.get_ptr_mut(idx) else {
        return;
    };
    let mut seq = (head as u32).wrapping_add(1) as u64;
    if detail.has & HAS_SOURCE != 0 {
        seq |= LOGGED_SOURCE;
    }
    if detail.has & HAS_PORT != 0 {
        seq |= LOGGED_PORT;
    }
    // One store for four fields.
    let meta = logged_meta(ns.inum, counter as u8, family, detail.port as u16);
    let rec = rec.cast::<u64>();
    // SAFETY: a value of EVENT_LOG (5 words) in this CPU's ring, which only
    // this CPU writes; the agent reads a record once its `seq` matches, so
    // `seq` is stored last, and the head after it.
    unsafe {
        write_volatile(rec, ns.cookie);
        write_volatile(rec.add(1), meta);
        write_volatile(rec.add(2), detail.source[0]);
        write_volatile(rec.add(3), detail.source[1]);
        write_volatile(rec.add(4), seq);
        write_volatile(head_p, head + 1);
    }
}

/// What an event says beyond its namespace, family and counter: the client's
/// address and destination port, where counted. Plain words without padding
/// (no `Option`s): a copy must not read uninitialised stack bytes, which
/// older verifiers (5.10) refuse.
#[derive(Clone, Copy)]
struct Detail {
    source: [u64; 2],
    /// `th->dest` as in the packet.
    port: u32,
    /// [`HAS_SOURCE`] | [`HAS_PORT`]: which of them hold a value.
    has: u32,
}

const HAS_SOURCE: u32 = 1;
const HAS_PORT: u32 = 2;

impl Detail {
    const NONE: Detail = Detail {
        source: [0; 2],
        port: 0,
        has: 0,
    };
}

#[inline(always)]
fn count(ns: Netns, family: u8, counter: Counter) {
    count_with(ns, family, counter, Detail::NONE);
}

/// Counts one event of a tracked namespace (only those: the others have no
/// name to report), per source and per port too where `detail` has them.
#[inline(always)]
fn count_with(ns: Netns, family: u8, counter: Counter, detail: Detail) {
    let Some(stats) = slot_of(ns).and_then(|slot| NS_STATS.get_ptr_mut(slot)) else {
        diag_inc(diag::UNTRACKED);
        return;
    };
    if detail.has != 0 {
        log_event(ns, family, counter, detail);
    }
    let f = usize::from(family == FAMILY_IPV6);
    let c = counter as usize;
    // SAFETY: `stats` is a value of NS_STATS; f < 2 and c < COUNTER_COUNT.
    add_u64(unsafe { addr_of_mut!((*stats).counts[f][c]) });
    let res = RATE_RES_NS.load();
    if res == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let bucket = unsafe { bpf_ktime_get_ns() } / res;
    let idx = (bucket & u64::from(RATE_RING - 1)) as u32;
    let Some(tag) = RATE_TAGS.get_ptr(idx) else {
        return;
    };
    // SAFETY: an array map value the agent writes with aligned stores.
    if unsafe { read_volatile(tag) } != bucket {
        diag_inc(diag::RATE_LATE);
        return;
    }
    // SAFETY: as above; idx < RATE_RING.
    add_u32(unsafe { addr_of_mut!((*stats).rates[f][c][idx as usize]) });
}

/// Reads a kernel value at `base + offset`; counts a failure in DIAG.
#[inline(always)]
fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        diag_inc(diag::READ_FAILED);
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    match unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            diag_inc(diag::READ_FAILED);
            None
        }
    }
}

/// The namespace's key: `net->net_cookie` and [`cookie_key`] of it where the
/// agent keys by cookie, else `net->ns.inum` and cookie 0 (inum 0 if it
/// cannot be read).
#[inline(always)]
fn netns_of(net: u64) -> Netns {
    let cookie_offset = NET_COOKIE_OFFSET.load();
    if cookie_offset == u32::MAX {
        let inum = read_at::<u32>(net, NET_INUM_OFFSET.load()).unwrap_or(0);
        return Netns { inum, cookie: 0 };
    }
    match read_at::<u64>(net, cookie_offset) {
        Some(cookie) if cookie != 0 => Netns {
            inum: cookie_key(cookie),
            cookie,
        },
        _ => Netns { inum: 0, cookie: 0 },
    }
}

/// [`netns_of`] for fentry/fexit programs, whose `net` argument the verifier
/// types from BTF: plain loads (faults read as 0) instead of helper calls.
/// The offsets are read-only globals, constants to the verifier.
#[inline(always)]
fn netns_of_btf(net: u64) -> Netns {
    if net == 0 {
        diag_inc(diag::READ_FAILED);
        return Netns { inum: 0, cookie: 0 };
    }
    let cookie_offset = NET_COOKIE_OFFSET.load();
    if cookie_offset == u32::MAX {
        // SAFETY: a BTF-typed kernel pointer at a constant offset of one of
        // its members: the verifier checks the access, the JIT turns a fault
        // into 0.
        let inum =
            unsafe { read_volatile((net + u64::from(NET_INUM_OFFSET.load())) as *const u32) };
        return Netns { inum, cookie: 0 };
    }
    // SAFETY: as above.
    let cookie = unsafe { read_volatile((net + u64::from(cookie_offset)) as *const u64) };
    if cookie == 0 {
        return Netns { inum: 0, cookie: 0 };
    }
    Netns {
        inum: cookie_key(cookie),
        cookie,
    }
}

/// The client's address from the skb (its IP header at `skb->head +
/// skb->network_header`): the fallback of [`packet_of`].
#[inline(always)]
fn source_of_skb(skb: u64, family: u8) -> Option<[u64; 2]> {
    let head = read_at::<u64>(skb, SKB_HEAD_OFFSET.load())?;
    let network = read_at::<u16>(skb, SKB_NETWORK_HEADER_OFFSET.load())?;
    let ip = head + u64::from(network);
    if family == FAMILY_IPV6 {
        // ipv6hdr: saddr at 8.
        read_at::<[u64; 2]>(ip, 8)
    } else {
        // iphdr: saddr at 12; in memory order, so its bytes stay first.
        read_at::<u32>(ip, 12).map(|v4| [u64::from(v4), 0])
    }
}

/// An IPv4 header without options and the TCP header's first 8 bytes, as
/// they lie in a linear packet (network byte order).
#[repr(C)]
#[derive(Clone, Copy)]
struct Head4 {
    ip: [u32; 5],
    tcp: TcpPorts,
}

/// The same for IPv6 without extension headers.
#[repr(C)]
#[derive(Clone, Copy)]
struct Head6 {
    ip: [u64; 5],
    tcp: TcpPorts,
}

/// Whether the 20 bytes are an IPv4 header without options of a TCP packet
/// with a valid header checksum (version/IHL 0x45, protocol 6, the ones'
/// complement sum of the header 0xffff; the sum does not depend on the
/// byte order of the words it adds).
#[inline(always)]
fn is_tcp_iphdr(ip: &[u32; 5]) -> bool {
    if ip[0] & 0xff != 0x45 || (ip[2] >> 8) & 0xff != 6 {
        return false;
    }
    let mut sum = 0u64;
    for word in ip {
        sum += u64::from(*word);
    }
    // Five words: three folds bring the sum to 16 bits.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// What [`packet_of`] read: plain words, all initialised (see [`Detail`]).
#[derive(Clone, Copy)]
struct Packet {
    source: [u64; 2],
    tcp: TcpPorts,
    /// [`HAS_SOURCE`] | [`HAS_TCP`]: which of them hold a value.
    has: u32,
}

const HAS_TCP: u32 = 4;

/// The client's address (`want_source`) and TCP header start of the packet
/// whose TCP header is at `th`. The hooks hand over a pointer into the
/// packet when its headers are linear (always for the packets SYNPROXY
/// answers in practice), and then the IP header ends right at `th`: one
/// kernel read of both headers, checked (IPv4: a valid header without
/// options, see [`is_tcp_iphdr`]; IPv6: version 6, next header TCP). Else
/// (IP options, IPv6 extension headers, a header copied to the stack) the
/// TCP header alone and the address through the skb.
#[inline(always)]
fn packet_of(skb: u64, th: u64, family: u8, want_source: bool) -> Packet {
    let mut p = Packet {
        source: [0; 2],
        tcp: TcpPorts {
            source: 0,
            dest: 0,
            seq: 0,
        },
        has: 0,
    };
    if th > 48 {
        if family == FAMILY_IPV6 {
            // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
            if let Ok(h) = unsafe { bpf_probe_read_kernel((th - 40) as *const Head6) } {
                if h.ip[0] & 0xf0 == 0x60 && (h.ip[0] >> 48) & 0xff == 6 {
                    p.source = [h.ip[1], h.ip[2]];
                    p.tcp = h.tcp;
                    p.has = HAS_SOURCE | HAS_TCP;
                    return p;
                }
            }
        } else {
            // SAFETY: as above.
            if let Ok(h) = unsafe { bpf_probe_read_kernel((th - 20) as *const Head4) } {
                if is_tcp_iphdr(&h.ip) {
                    p.source = [u64::from(h.ip[3]), 0];
                    p.tcp = h.tcp;
                    p.has = HAS_SOURCE | HAS_TCP;
                    return p;
                }
            }
        }
    }
    if let Some(tcp) = read_at::<TcpPorts>(th, 0) {
        p.tcp = tcp;
        p.has |= HAS_TCP;
    }
    if want_source {
        if let Some(source) = source_of_skb(skb, family) {
            p.source = source;
            p.has |= HAS_SOURCE;
        }
    }
    p
}

/// The event's detail from what [`packet_of`] read: the source and port
/// where their counting is on.
#[inline(always)]
fn detail_of(p: &Packet) -> Detail {
    let mut d = Detail::NONE;
    if p.has & HAS_SOURCE != 0 && COUNT_SOURCES.load() != 0 {
        d.source = p.source;
        d.has |= HAS_SOURCE;
    }
    if p.has & HAS_TCP != 0 && COUNT_PORTS.load() != 0 {
        d.port = u32::from(p.tcp.dest);
        d.has |= HAS_PORT;
    }
    d
}

#[inline(always)]
fn on_synack(netns: Netns, skb: u64, th: u64, family: u8) {
    let want_source = COUNT_SOURCES.load() != 0;
    let detail = if want_source || COUNT_PORTS.load() != 0 {
        detail_of(&packet_of(skb, th, family, want_source))
    } else {
        Detail::NONE
    };
    count_with(netns, family, Counter::SynReceived, detail);
}

/// syn_received, IPv4: `synproxy_send_client_synack(net, skb, th, opts)`.
#[kprobe]
pub fn spx_synack4(ctx: ProbeContext) -> u32 {
    on_synack(
        netns_of(ctx.arg(0).unwrap_or(0)),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        FAMILY_IPV4,
    );
    0
}

/// syn_received, IPv6: `synproxy_send_client_synack_ipv6(net, skb, th, opts)`.
#[kprobe]
pub fn spx_synack6(ctx: ProbeContext) -> u32 {
    on_synack(
        netns_of(ctx.arg(0).unwrap_or(0)),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        FAMILY_IPV6,
    );
    0
}

/// What the cookie check's arguments say about the event.
#[derive(Clone, Copy)]
struct AckArgs {
    netns: Netns,
    recv_seq: u32,
    /// `ntohl(th->seq)`
    seq: u32,
    detail: Detail,
}

/// The first 8 bytes of `struct tcphdr`, network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpPorts {
    source: u16,
    dest: u16,
    seq: u32,
}

#[inline(always)]
fn ack_args(netns: Netns, skb: u64, th: u64, recv_seq: u64, family: u8) -> AckArgs {
    // One read for the address, the ports and the sequence number.
    let p = packet_of(skb, th, family, COUNT_SOURCES.load() != 0);
    AckArgs {
        netns,
        recv_seq: recv_seq as u32,
        seq: u32::from_be(p.tcp.seq),
        detail: detail_of(&p),
    }
}

#[inline(always)]
fn on_ack_entry(ctx: &ProbeContext, family: u8) {
    let net: u64 = ctx.arg(0).unwrap_or(0);
    let skb: u64 = ctx.arg(1).unwrap_or(0);
    let th: u64 = ctx.arg(2).unwrap_or(0);
    let recv_seq: u64 = ctx.arg(4).unwrap_or(0);
    let args = ack_args(netns_of(net), skb, th, recv_seq, family);
    if let Some(stash) = ACK_STASH.get_ptr_mut(0) {
        // SAFETY: this CPU's stash; entry and return of one call run on this CPU
        // without another call in between (softirq, no nesting).
        unsafe {
            *stash = AckStash {
                netns: args.netns.inum,
                cookie: args.netns.cookie,
                recv_seq: args.recv_seq,
                seq: args.seq,
                family,
                armed: 1,
                has_source: u8::from(args.detail.has & HAS_SOURCE != 0),
                has_port: u8::from(args.detail.has & HAS_PORT != 0),
                source: args.detail.source,
                port: args.detail.port as u16,
                _pad: [0; 6],
            };
        }
    }
}

/// cookie_valid or cookie_invalid, plus cookie_retrans for the hook's
/// `ntohl(th->seq) + 1` call.
#[inline(always)]
fn on_ack_result(args: AckArgs, family: u8, ret: u64) {
    // A C `bool`: only the low 8 bits are defined.
    let valid = ret & 0xff != 0;
    if valid {
        count_with(args.netns, family, Counter::CookieValid, args.detail);
        if args.recv_seq == args.seq.wrapping_add(1) {
            count(args.netns, family, Counter::CookieRetrans);
        }
    } else {
        count_with(args.netns, family, Counter::CookieInvalid, args.detail);
    }
}

/// `synproxy_recv_client_ack(net, skb, th, opts, recv_seq)` entry: stash.
#[kprobe]
pub fn spx_ack4(ctx: ProbeContext) -> u32 {
    on_ack_entry(&ctx, FAMILY_IPV4);
    0
}

/// `synproxy_recv_client_ack_ipv6(...)` entry: stash.
#[kprobe]
pub fn spx_ack6(ctx: ProbeContext) -> u32 {
    on_ack_entry(&ctx, FAMILY_IPV6);
    0
}

/// Return of either `synproxy_recv_client_ack[_ipv6]`: counts with what the
/// entry stashed.
#[kretprobe]
pub fn spx_ack_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    let Some(stash) = ACK_STASH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's stash (see on_ack_entry).
    let s = unsafe { *stash };
    if s.armed == 0 {
        diag_inc(diag::ACK_RETURN_UNMATCHED);
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*stash).armed = 0 };
    let args = AckArgs {
        netns: Netns {
            inum: s.netns,
            cookie: s.cookie,
        },
        recv_seq: s.recv_seq,
        seq: s.seq,
        detail: Detail {
            source: s.source,
            port: u32::from(s.port),
            has: if s.has_source != 0 { HAS_SOURCE } else { 0 }
                | if s.has_port != 0 { HAS_PORT } else { 0 },
        },
    };
    on_ack_result(args, s.family, ret);
    0
}

/// `nf_ct_seqadj_init(ct, ctinfo, off)`: the synproxy hooks' reopen path
/// calls it with off 0 in the original direction right before
/// `conn_reopened++`, and no other caller does. It runs about once per proxied
/// connection, not per packet like the hook, so the namespace and family are
/// read here, from the conntrack entry, rather than in a probe on the hook.
#[inline(always)]
fn on_seqadj(ct: u64, ctinfo: u64, off: u64) {
    let ctinfo = ctinfo & 0xffff_ffff;
    let off = off & 0xffff_ffff;
    if off != 0 || ctinfo >= IP_CT_IS_REPLY {
        return;
    }
    let net = read_at::<u64>(ct, CT_NET_OFFSET.load()).unwrap_or(0);
    let Some(l3num) = read_at::<u16>(ct, CT_L3NUM_OFFSET.load()) else {
        return;
    };
    let family = if l3num == AF_INET6 {
        FAMILY_IPV6
    } else {
        FAMILY_IPV4
    };
    count(netns_of(net), family, Counter::ConnReopened);
}

/// kprobe on `nf_ct_seqadj_init`.
#[kprobe]
pub fn spx_seqadj(ctx: ProbeContext) -> u32 {
    on_seqadj(
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
    );
    0
}

// fentry/fexit: the same probe points and counting code. Arguments are the
// context's u64 slots; an fexit program's return value is the slot after the
// last argument (read that way rather than with bpf_get_func_ret, which
// needs 5.17).

#[fentry(function = "synproxy_send_client_synack")]
pub fn spxf_synack4(ctx: FEntryContext) -> i32 {
    on_synack(
        netns_of_btf(ctx.arg(0)),
        ctx.arg(1),
        ctx.arg(2),
        FAMILY_IPV4,
    );
    0
}

#[fentry(function = "synproxy_send_client_synack_ipv6")]
pub fn spxf_synack6(ctx: FEntryContext) -> i32 {
    on_synack(
        netns_of_btf(ctx.arg(0)),
        ctx.arg(1),
        ctx.arg(2),
        FAMILY_IPV6,
    );
    0
}

/// `synproxy_recv_client_ack(net, skb, th, opts, recv_seq)`, returns bool (slot 5).
#[fexit(function = "synproxy_recv_client_ack")]
pub fn spxf_ack4(ctx: FExitContext) -> i32 {
    let args = ack_args(
        netns_of_btf(ctx.arg(0)),
        ctx.arg(1),
        ctx.arg(2),
        ctx.arg(4),
        FAMILY_IPV4,
    );
    on_ack_result(args, FAMILY_IPV4, ctx.arg(5));
    0
}

#[fexit(function = "synproxy_recv_client_ack_ipv6")]
pub fn spxf_ack6(ctx: FExitContext) -> i32 {
    let args = ack_args(
        netns_of_btf(ctx.arg(0)),
        ctx.arg(1),
        ctx.arg(2),
        ctx.arg(4),
        FAMILY_IPV6,
    );
    on_ack_result(args, FAMILY_IPV6, ctx.arg(5));
    0
}

#[fentry(function = "nf_ct_seqadj_init")]
pub fn spxf_seqadj(ctx: FEntryContext) -> i32 {
    on_seqadj(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

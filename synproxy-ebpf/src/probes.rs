//! The probe set (README, "How the events are counted"):
//!
//! | probe | counts |
//! |---|---|
//! | kprobe `synproxy_send_client_synack[_ipv6]` | syn_received |
//! | kprobe `synproxy_recv_client_ack[_ipv6]` (stash) + kretprobe | cookie_valid / cookie_invalid, and cookie_retrans when valid and `recv_seq == ntohl(th->seq) + 1` |
//! | kprobe `ipv4_synproxy_hook` / `ipv6_synproxy_hook` (stash) + kprobe `nf_ct_seqadj_init` | conn_reopened (`off == 0`, original direction, the hook's own entry) |
//!
//! Struct offsets come from the kernel's BTF through globals set by the agent.
//! Counting happens in per-CPU maps (no atomics, no per-event output); kernel-side
//! anomalies are counted in `DIAG`, which the agent reports once per interval.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
    Global,
};
use synproxy_common::{
    diag, AckStash, CountKey, Counter, HookStash, RateKey, COUNTS_MAX_ENTRIES, FAMILY_IPV4,
    FAMILY_IPV6, LOST_MAX_ENTRIES, RATES_MAX_ENTRIES,
};

#[no_mangle]
static NET_INUM_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static HOOK_STATE_NET_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static NET_COOKIE_OFFSET: Global<u32> = Global::new(u32::MAX);
#[no_mangle]
static SKB_NFCT_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static RATE_RES_NS: Global<u64> = Global::new(100_000_000);

#[map]
static COUNTS: PerCpuHashMap<CountKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAX_ENTRIES, 0);
/// Per key: events that found `COUNTS` full (reported per namespace).
#[map]
static LOST: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(LOST_MAX_ENTRIES, 0);
#[map]
static RATES: PerCpuHashMap<RateKey, u64> = PerCpuHashMap::with_max_entries(RATES_MAX_ENTRIES, 0);
#[map]
static DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(diag::COUNT, 0);
#[map]
static ACK_STASH: PerCpuArray<AckStash> = PerCpuArray::with_max_entries(1, 0);
#[map]
static HOOK_STASH: PerCpuArray<HookStash> = PerCpuArray::with_max_entries(1, 0);

/// `IP_CT_IS_REPLY`: ctinfo values below it are the original direction.
const IP_CT_IS_REPLY: u64 = 3;

#[inline(always)]
fn diag_inc(slot: u32) {
    if let Some(p) = DIAG.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; kprobe programs do not nest on a CPU.
        unsafe { *p += 1 };
    }
}

/// Adds one to this CPU's value of `key`, creating it if needed.
#[inline(always)]
fn bump<K>(map: &PerCpuHashMap<K, u64>, key: &K) -> bool {
    if let Some(p) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the value; no concurrent writer on this CPU.
        unsafe { *p += 1 };
        return true;
    }
    if map.insert(key, 1u64, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU created it in between (EEXIST), or the map is full.
    match map.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: as above.
            unsafe { *p += 1 };
            true
        }
        None => false,
    }
}

/// Identity of a network namespace as the maps key it.
#[derive(Clone, Copy)]
struct Netns {
    inum: u32,
    cookie: u64,
}

#[inline(always)]
fn count(ns: Netns, family: u8, counter: Counter) {
    let key = CountKey {
        netns: ns.inum,
        family,
        counter: counter as u8,
        _pad: [0; 2],
        cookie: ns.cookie,
    };
    if !bump(&COUNTS, &key) {
        // Reported once per interval by the agent, never per event.
        diag_inc(diag::COUNT_MAP_FULL);
        let _ = bump(&LOST, &key);
    }
    let res = RATE_RES_NS.load();
    if res == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let rate_key = RateKey {
        count: key,
        bucket: now / res,
    };
    if !bump(&RATES, &rate_key) {
        diag_inc(diag::RATE_MAP_FULL);
    }
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

/// `net->ns.inum` and `net->net_cookie` (0 if they cannot be read).
#[inline(always)]
fn netns_of(net: u64) -> Netns {
    let inum = read_at::<u32>(net, NET_INUM_OFFSET.load()).unwrap_or(0);
    let cookie_offset = NET_COOKIE_OFFSET.load();
    let cookie = if cookie_offset == u32::MAX {
        0
    } else {
        read_at::<u64>(net, cookie_offset).unwrap_or(0)
    };
    Netns { inum, cookie }
}

#[inline(always)]
fn on_synack(ctx: &ProbeContext, family: u8) {
    let net: u64 = ctx.arg(0).unwrap_or(0);
    count(netns_of(net), family, Counter::SynReceived);
}

/// syn_received, IPv4: `synproxy_send_client_synack(net, skb, th, opts)`.
#[kprobe]
pub fn spx_synack4(ctx: ProbeContext) -> u32 {
    on_synack(&ctx, FAMILY_IPV4);
    0
}

/// syn_received, IPv6: `synproxy_send_client_synack_ipv6(net, skb, th, opts)`.
#[kprobe]
pub fn spx_synack6(ctx: ProbeContext) -> u32 {
    on_synack(&ctx, FAMILY_IPV6);
    0
}

#[inline(always)]
fn on_ack_entry(ctx: &ProbeContext, family: u8) {
    let net: u64 = ctx.arg(0).unwrap_or(0);
    let th: u64 = ctx.arg(2).unwrap_or(0);
    let recv_seq: u64 = ctx.arg(4).unwrap_or(0);
    // tcphdr: source(2) dest(2) seq(4): network byte order.
    let seq = read_at::<u32>(th, 4).map(u32::from_be).unwrap_or(0);
    let netns = netns_of(net);
    if let Some(stash) = ACK_STASH.get_ptr_mut(0) {
        // SAFETY: this CPU's stash; entry and return of one call run on this CPU
        // without another call in between (softirq, no nesting).
        unsafe {
            *stash = AckStash {
                netns: netns.inum,
                cookie: netns.cookie,
                recv_seq: recv_seq as u32,
                seq,
                family,
                armed: 1,
                _pad: [0; 2],
            };
        }
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

/// Return of either `synproxy_recv_client_ack[_ipv6]`: cookie_valid or
/// cookie_invalid, plus cookie_retrans for the hook's `ntohl(th->seq) + 1` call.
#[kretprobe]
pub fn spx_ack_ret(ctx: RetProbeContext) -> u32 {
    // A C `bool`: only the low 8 bits are defined.
    let ret: u64 = ctx.ret();
    let valid = ret & 0xff != 0;
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
    let ns = Netns {
        inum: s.netns,
        cookie: s.cookie,
    };
    if valid {
        count(ns, s.family, Counter::CookieValid);
        if s.recv_seq == s.seq.wrapping_add(1) {
            count(ns, s.family, Counter::CookieRetrans);
        }
    } else {
        count(ns, s.family, Counter::CookieInvalid);
    }
    0
}

#[inline(always)]
fn on_hook(ctx: &ProbeContext, family: u8) {
    let skb: u64 = ctx.arg(1).unwrap_or(0);
    let state: u64 = ctx.arg(2).unwrap_or(0);
    let net = read_at::<u64>(state, HOOK_STATE_NET_OFFSET.load()).unwrap_or(0);
    let nfct = read_at::<u64>(skb, SKB_NFCT_OFFSET.load()).unwrap_or(0);
    let netns = netns_of(net);
    if let Some(stash) = HOOK_STASH.get_ptr_mut(0) {
        // SAFETY: this CPU's stash; the hook calls nf_ct_seqadj_init on this CPU
        // before any other hook invocation can run here.
        unsafe {
            *stash = HookStash {
                ct: nfct & !7,
                cookie: netns.cookie,
                netns: netns.inum,
                family,
                armed: 1,
                _pad: [0; 2],
            };
        }
    }
}

/// `ipv4_synproxy_hook(priv, skb, state)` entry: remember netns and conntrack entry.
#[kprobe]
pub fn spx_hook4(ctx: ProbeContext) -> u32 {
    on_hook(&ctx, FAMILY_IPV4);
    0
}

/// `ipv6_synproxy_hook(priv, skb, state)` entry.
#[kprobe]
pub fn spx_hook6(ctx: ProbeContext) -> u32 {
    on_hook(&ctx, FAMILY_IPV6);
    0
}

/// `nf_ct_seqadj_init(ct, ctinfo, off)`: the hook's reopen path calls it with
/// off 0 in the original direction right before `conn_reopened++`.
#[kprobe]
pub fn spx_seqadj(ctx: ProbeContext) -> u32 {
    let ct: u64 = ctx.arg(0).unwrap_or(0);
    let ctinfo: u64 = ctx.arg::<u64>(1).unwrap_or(0) & 0xffff_ffff;
    let off: u64 = ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff;
    if off != 0 || ctinfo >= IP_CT_IS_REPLY {
        return 0;
    }
    let Some(stash) = HOOK_STASH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's stash (see on_hook).
    let s = unsafe { *stash };
    if s.armed == 0 || s.ct != ct {
        diag_inc(diag::SEQADJ_UNMATCHED);
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*stash).armed = 0 };
    let ns = Netns {
        inum: s.netns,
        cookie: s.cookie,
    };
    count(ns, s.family, Counter::ConnReopened);
    0
}

//! A namespace's round as the verdict reads it: its SYNPROXY totals and its
//! TCP stack and conntrack sample, mapped onto the verdict's signals.

use super::{Readings, Signal};
use crate::fields::{Field, Values};
use crate::sample::StackSample;
use synproxy_common::Counter;

/// conntrack's statistics whose sum means entries refused or evicted.
const CONNTRACK_LOSSES: [&str; 3] = ["drop", "early_drop", "insert_failed"];

/// The verdict's readings from SYNPROXY's totals and, when read, the stack's.
pub fn readings(totals: &Values<u64>, stack: Option<&StackSample>) -> Readings {
    let mut r = Readings::default();
    let synproxy = |c: Counter| {
        Field::ALL
            .iter()
            .position(|f| *f == Field::Counter(c))
            .map(|i| totals[i])
    };
    r.counters[Signal::SynReceived as usize] = synproxy(Counter::SynReceived);
    r.counters[Signal::CookieInvalid as usize] = synproxy(Counter::CookieInvalid);
    r.counters[Signal::CookieRetrans as usize] = synproxy(Counter::CookieRetrans);
    let Some(stack) = stack else { return r };
    let tcpext = |name: &str| {
        stack.netstat.as_ref().and_then(|fields| {
            fields
                .iter()
                .find(|(f, _)| f.group == "TcpExt" && f.name == name)
                .map(|(_, v)| *v)
        })
    };
    r.counters[Signal::KernelSyncookies as usize] = tcpext("SyncookiesSent");
    r.counters[Signal::ListenDrops as usize] = tcpext("ListenDrops");
    if let Some(ct) = &stack.conntrack {
        if let Some(stats) = &ct.stats {
            let losses: Vec<u64> = stats
                .iter()
                .filter(|(name, _)| CONNTRACK_LOSSES.contains(name))
                .map(|(_, v)| *v)
                .collect();
            r.counters[Signal::ConntrackDrops as usize] =
                (!losses.is_empty()).then(|| losses.iter().fold(0u64, |a, v| a.saturating_add(*v)));
        }
        r.conntrack_count_max = ct.count.zip(ct.max);
    }
    r
}

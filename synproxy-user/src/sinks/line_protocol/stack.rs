//! The TCP stack's and conntrack's lines, in the shapes of Telegraf's
//! `inputs.nstat` and `inputs.conntrack` (plus the `netns` tag):
//! `nstat,host=gw01,name=netstat,netns=blue TcpExtListenDrops=0i,...,TcpExtSyncookiesSent=12i TS`
//! `nstat,host=gw01,name=snmp,netns=blue TcpActiveOpens=3i,... TS`
//! `conntrack,host=gw01,netns=blue ip_conntrack_count=7,ip_conntrack_max=262144 TS`
//! `conntrack,cpu=all,host=gw01,netns=blue drop=0i,early_drop=0i,entries=7i,... TS`
//! Fields in byte order of their names; integers as every other line's.

use super::{escape_tag, timestamp, LineEncoder, NETNS_TAG};
use crate::sample::StackSample;
use crate::sources::proc::tcp_counters::StackField;
use std::io::Write as _;

/// The TCP stack's counters (`name=netstat` and `name=snmp`).
pub const NSTAT_MEASUREMENT: &str = "nstat";
/// conntrack's table size and limit, and its statistics (`cpu=all`).
pub const CONNTRACK_MEASUREMENT: &str = "conntrack";

impl LineEncoder {
    /// The `nstat` and `conntrack` lines of one namespace (none for a part
    /// that was not read).
    pub fn encode_stack(&self, sample: &StackSample, timestamp_ns: u64, out: &mut Vec<u8>) {
        let netns = sample.netns.as_deref().map(escape_tag).unwrap_or_default();
        for (name, fields) in [("netstat", &sample.netstat), ("snmp", &sample.snmp)] {
            let Some(fields) = fields else { continue };
            if fields.is_empty() {
                continue;
            }
            let mut fields: Vec<(String, u64)> = fields
                .iter()
                .map(|(field, value)| (StackField::field_name(field), *value))
                .collect();
            fields.sort();
            out.extend_from_slice(NSTAT_MEASUREMENT.as_bytes());
            self.write_tags(out, &[("name", name), (NETNS_TAG, &netns)]);
            let mut separator = b' ';
            for (field, value) in &fields {
                self.write_int(out, &mut separator, field, *value);
            }
            let _ = writeln!(out, " {}", timestamp(timestamp_ns));
        }
        let Some(ct) = &sample.conntrack else { return };
        if ct.count.is_some() || ct.max.is_some() {
            out.extend_from_slice(CONNTRACK_MEASUREMENT.as_bytes());
            self.write_tags(out, &[(NETNS_TAG, &netns)]);
            let mut separator = b' ';
            // Floats, as Telegraf writes these two.
            for (field, value) in [
                ("ip_conntrack_count", ct.count),
                ("ip_conntrack_max", ct.max),
            ] {
                if let Some(value) = value {
                    Self::write_float(out, &mut separator, field, value as f64);
                }
            }
            let _ = writeln!(out, " {}", timestamp(timestamp_ns));
        }
        if let Some(stats) = ct.stats.as_ref().filter(|s| !s.is_empty()) {
            let mut stats = stats.clone();
            stats.sort();
            out.extend_from_slice(CONNTRACK_MEASUREMENT.as_bytes());
            self.write_tags(out, &[("cpu", "all"), (NETNS_TAG, &netns)]);
            let mut separator = b' ';
            for (field, value) in stats {
                self.write_int(out, &mut separator, field, value);
            }
            let _ = writeln!(out, " {}", timestamp(timestamp_ns));
        }
    }
}

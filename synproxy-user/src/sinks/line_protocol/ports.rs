//! The top destination ports, one line per namespace, counter and rank
//! (IPv4 and IPv6 summed), best first:
//! `synproxy_top_ports,counter=syn_received,host=gw01,netns=blue,port=8080,rank=1 events=500i,share=0.5 TS`
//! `share` is of the namespace's eBPF events of the counter in the interval.

use super::{escape_tag, timestamp, LineEncoder, NETNS_TAG};
use crate::sample::TopPorts;
use std::io::Write as _;

/// The top ports' measurement.
pub const TOP_PORTS_MEASUREMENT: &str = "synproxy_top_ports";

impl LineEncoder {
    /// One `synproxy_top_ports` line per entry (none for an empty list).
    pub fn encode_top_ports(&self, list: &TopPorts, timestamp_ns: u64, out: &mut Vec<u8>) {
        let netns = list.netns.as_deref().map(escape_tag).unwrap_or_default();
        for (i, entry) in list.entries.iter().enumerate() {
            out.extend_from_slice(TOP_PORTS_MEASUREMENT.as_bytes());
            let rank = (i + 1).to_string();
            let port = entry.port.to_string();
            self.write_tags(
                out,
                &[
                    ("counter", list.counter.name()),
                    (NETNS_TAG, &netns),
                    ("port", &port),
                    ("rank", &rank),
                ],
            );
            let mut separator = b' ';
            self.write_int(out, &mut separator, "events", entry.events);
            Self::write_float(out, &mut separator, "share", entry.share);
            let _ = writeln!(out, " {}", timestamp(timestamp_ns));
        }
    }
}

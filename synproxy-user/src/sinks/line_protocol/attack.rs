//! The attack detector's line: one when an attack starts, one per round
//! while it lasts, one when it ends (docs/attacks.md):
//! `synproxy_attack,host=gw01,kind=syn_flood,netns=blue,phase=start,port=443 baseline=20,defense="syn_flood_absorbed",duration=0.5,events=6000i,id="blue/syn_flood/443/1733550000000000000",peak_rate=12000,rate=12000,start=1733550000000000000i,threshold=100,top_ports="443=6000",top_sources="203.0.113.7=5000,198.51.100.2=1000" TS`
//! `port` is `all` for the namespace's total; `end` (ns) is added on the
//! end line; `defense` only with the verdict on.

use super::defense::write_escaped_string;
use super::{escape_tag, timestamp, LineEncoder, NETNS_TAG};
use crate::analysis::attack::AttackEvent;
use std::io::Write as _;

/// The detector's measurement.
pub const ATTACK_MEASUREMENT: &str = "synproxy_attack";

impl LineEncoder {
    pub fn encode_attack(&self, e: &AttackEvent, out: &mut Vec<u8>) {
        let netns = e.netns.as_deref().map(escape_tag).unwrap_or_default();
        let port = e.port_tag();
        out.extend_from_slice(ATTACK_MEASUREMENT.as_bytes());
        self.write_tags(
            out,
            &[
                ("kind", e.kind.name()),
                (NETNS_TAG, &netns),
                ("phase", e.phase.name()),
                ("port", &port),
            ],
        );
        let mut separator = b' ';
        Self::write_float(out, &mut separator, "baseline", e.baseline);
        if let Some(defense) = e.defense {
            let _ = write!(out, ",defense=\"{defense}\"");
        }
        Self::write_float(out, &mut separator, "duration", e.duration_secs());
        if let Some(end) = e.end_ns {
            self.write_int(out, &mut separator, "end", timestamp(end));
        }
        self.write_int(out, &mut separator, "events", e.events);
        out.extend_from_slice(b",id=\"");
        write_escaped_string(out, &e.id);
        out.push(b'"');
        Self::write_float(out, &mut separator, "peak_rate", e.peak_rate);
        Self::write_float(out, &mut separator, "rate", e.rate);
        self.write_int(out, &mut separator, "start", timestamp(e.start_ns));
        Self::write_float(out, &mut separator, "threshold", e.threshold);
        let ports: Vec<String> = e
            .top_ports
            .iter()
            .map(|p| format!("{}={}", p.port, p.events))
            .collect();
        let _ = write!(out, ",top_ports=\"{}\"", ports.join(","));
        let sources: Vec<String> = e
            .top_sources
            .iter()
            .map(|s| format!("{}={}", s.source, s.events))
            .collect();
        out.extend_from_slice(b",top_sources=\"");
        write_escaped_string(out, &sources.join(","));
        let _ = writeln!(out, "\" {}", timestamp(e.timestamp_ns));
    }
}

//! The defense verdict's line, one per namespace per round:
//! `synproxy_defense,host=gw01,netns=blue changed=true,reasons="syn_received 5200.0/s >= 50.0/s (baseline 3.1/s)",severity=2i,since=1733550000000000000i,state="syn_flood_absorbed" TS`
//! `state` is one of the states in docs/verdict.md, `severity` its rank
//! (0 learning, 1 calm, up to 6), `since` when it began (ns), `changed`
//! whether it began this round; `reasons` every firing signal, "" when calm.

use super::{escape_tag, timestamp, LineEncoder, NETNS_TAG};
use crate::sample::DefenseSample;
use std::io::Write as _;

/// The verdict's measurement.
pub const DEFENSE_MEASUREMENT: &str = "synproxy_defense";

impl LineEncoder {
    pub fn encode_defense(&self, sample: &DefenseSample, timestamp_ns: u64, out: &mut Vec<u8>) {
        let v = &sample.verdict;
        let netns = sample.netns.as_deref().map(escape_tag).unwrap_or_default();
        out.extend_from_slice(DEFENSE_MEASUREMENT.as_bytes());
        self.write_tags(out, &[(NETNS_TAG, &netns)]);
        let changed = v.changed_from.is_some();
        let _ = write!(out, " changed={changed},reasons=\"");
        write_escaped_string(out, &v.reasons_line());
        out.push(b'"');
        let mut separator = b',';
        self.write_int(
            out,
            &mut separator,
            "severity",
            u64::from(v.state.severity()),
        );
        self.write_int(out, &mut separator, "since", timestamp(v.since_ns));
        let _ = writeln!(
            out,
            ",state=\"{}\" {}",
            v.state.name(),
            timestamp(timestamp_ns)
        );
    }
}

/// A string field's content: `"` and `\` escaped, line breaks as spaces.
pub(super) fn write_escaped_string(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push(b'\\');
                out.push(c as u8);
            }
            '\n' | '\r' => out.push(b' '),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

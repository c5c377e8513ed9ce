//! From a namespace name (the bytes of a file name under `/run/netns`, which
//! need not be UTF-8) to its `netns` label, by a rule that never maps two
//! names to one label: printable UTF-8 is kept as is; every other byte (a
//! control character, including DEL and the C1 controls, a byte that is not
//! part of valid UTF-8) and the backslash itself are written `\xHH` (two
//! lowercase hex digits). A backslash in a label therefore always starts such
//! an escape, so the label decodes back to the name ([`decode`]).
//!
//! The label is valid UTF-8 without control characters and never ends in a
//! backslash: line protocol carries it as a tag value (with its usual
//! escaping of `,`, `=`, space and `\`) and Prometheus as a label value, and
//! both read back exactly this label; a terminal shows it as text.

use std::fmt::Write as _;

/// The label of the namespace named `name`.
pub fn encode(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                let mut bytes = [0u8; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    push_escaped(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            push_escaped(&mut out, b);
        }
    }
    out
}

fn push_escaped(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

/// The name a label was made from; None if `label` is not an [`encode`] output.
pub fn decode(label: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(label.len());
    let mut rest = label;
    while let Some(i) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let hex = rest.get(i + 2..i + 4)?;
        if rest.as_bytes().get(i + 1) != Some(&b'x')
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        out.push(u8::from_str_radix(hex, 16).ok()?);
        rest = &rest[i + 4..];
    }
    out.extend_from_slice(rest.as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(encode(b"edge"), "edge");
        assert_eq!(encode("blå kant,x=1".as_bytes()), "blå kant,x=1");
        assert_eq!(encode(b"a\x1b[31mred"), "a\\x1b[31mred");
        assert_eq!(encode(b"new\nline"), "new\\x0aline");
        assert_eq!(encode(b"end\\"), "end\\x5c");
        assert_eq!(encode(b"lit\\x1b"), "lit\\x5cx1b");
        assert_eq!(encode(b"bad\xff\xfe"), "bad\\xff\\xfe");
        // U+009B (CSI as one C1 control character): both UTF-8 bytes.
        assert_eq!(encode("c1\u{9b}".as_bytes()), "c1\\xc2\\x9b");
        assert_eq!(encode(b"del\x7f"), "del\\x7f");
    }

    #[test]
    fn names_the_old_rule_merged_get_different_labels() {
        // All of these became `a_` before.
        let names: [&[u8]; 5] = [b"a\n", b"a\x1b", b"a\\", b"a\t", b"a_"];
        let labels: std::collections::HashSet<String> = names.iter().map(|n| encode(n)).collect();
        assert_eq!(labels.len(), names.len(), "{labels:?}");
    }

    #[test]
    fn decode_rejects_what_encode_never_writes() {
        for label in ["a\\", "a\\x", "a\\x1", "a\\xZZ", "a\\x1B", "a\\n"] {
            assert_eq!(decode(label), None, "{label}");
        }
    }

    /// Byte names (a file name is never empty) with many of the characters
    /// that matter.
    fn names() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..24),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'\\'),
                    Just(b'x'),
                    Just(b'_'),
                    Just(0x1b),
                    Just(b'\n'),
                    Just(0xc2),
                    Just(0x9b),
                    Just(b'a'),
                    Just(b' '),
                    Just(b','),
                    Just(b'='),
                    Just(b'"'),
                ],
                1..12
            ),
        ]
    }

    proptest! {
        #[test]
        fn the_rule_is_injective(a in names(), b in names()) {
            let (la, lb) = (encode(&a), encode(&b));
            prop_assert_eq!(decode(&la), Some(a.clone()));
            prop_assert_eq!(decode(&lb), Some(b.clone()));
            if a != b {
                prop_assert_ne!(la, lb);
            }
        }

        #[test]
        fn labels_are_safe_text(name in names()) {
            let label = encode(&name);
            prop_assert!(!label.chars().any(char::is_control), "{:?}", label);
            prop_assert!(!label.ends_with('\\'), "{:?}", label);
        }

        /// Line protocol (read back by an independent parser) and the
        /// Prometheus exposition carry two different names as two different
        /// labels, each exactly the encoded label.
        #[test]
        fn both_outputs_carry_the_label_exactly(a in names(), b in names()) {
            prop_assume!(a != b);
            let labels = [encode(&a), encode(&b)];
            for label in &labels {
                prop_assert_eq!(line_protocol_tag(label), Some(label.clone()));
            }
            let got = prometheus_labels(&labels);
            prop_assert_eq!(got.len(), 2, "{:?}", got);
            prop_assert!(got.contains(&labels[0]) && got.contains(&labels[1]), "{:?}", got);
        }
    }

    fn sample(label: &str, series: u64) -> crate::sample::NamespaceSnapshot {
        crate::sample::NamespaceSnapshot {
            series,
            sample: crate::sample::Sample {
                netns: Some(label.to_string()),
                totals: [series; crate::fields::FIELD_COUNT],
                timestamp_ns: 1,
            },
            ebpf: None,
        }
    }

    fn line_protocol_tag(label: &str) -> Option<String> {
        use crate::sinks::line_protocol::{IntegerType, LineEncoder, NETNS_TAG};
        let mut out = Vec::new();
        LineEncoder::new(&[], IntegerType::Signed).encode(&sample(label, 1).sample, &mut out);
        let text = String::from_utf8(out).ok()?;
        let mut lines = influxdb_line_protocol::parse_lines(&text);
        let line = lines.next()?.ok()?;
        if lines.next().is_some() {
            return None;
        }
        line.tag_value(NETNS_TAG).map(|v| v.to_string())
    }

    /// The `netns` label values of `synproxy_syn_received_total`, unescaped
    /// as the text format says (`\\`, `\"`, `\n`).
    fn prometheus_labels(labels: &[String]) -> Vec<String> {
        use crate::sinks::prometheus::{render, Format, Published};
        let snapshot = crate::sample::Snapshot {
            timestamp_ns: 1,
            namespaces: labels.iter().zip(1..).map(|(l, s)| sample(l, s)).collect(),
            retained: Vec::new(),
            failures: Vec::new(),
            probes: None,
            agent: crate::sample::AgentHealth {
                round_duration: std::time::Duration::ZERO,
                ebpf_enabled: false,
                ebpf_attached: false,
                ebpf_off: None,
                programs: Vec::new(),
                influx: None,
            },
            top_sources: Vec::new(),
            top_ports: Vec::new(),
            stack: Vec::new(),
            defense: Vec::new(),
            attacks: Vec::new(),
        };
        let mut published = Published::default();
        published.add(&std::sync::Arc::new(snapshot));
        let text = render(&published, Format::Text).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("synproxy_syn_received_total{netns=\""))
            .filter_map(|rest| {
                let mut value = String::new();
                let mut chars = rest.chars();
                loop {
                    match chars.next()? {
                        '"' => return Some(value),
                        '\\' => match chars.next()? {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            _ => return None,
                        },
                        c => value.push(c),
                    }
                }
            })
            .collect()
    }
}

//! Minimal InfluxDB line protocol parser: enough to read the agent's output.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    pub timestamp: Option<i64>,
}

impl Line {
    /// An integer field as u64 (counters are never negative).
    pub fn counter(&self, name: &str) -> Result<u64> {
        match self.fields.get(name) {
            Some(FieldValue::Int(v)) => u64::try_from(*v).with_context(|| format!("{name}={v}")),
            Some(FieldValue::UInt(v)) => Ok(*v),
            Some(other) => bail!("field {name} is not an integer: {other:?}"),
            None => bail!("field {name} missing"),
        }
    }
}

/// The text before and after the first unescaped `sep` (double quotes are not
/// special: measurement, tag keys and values and field keys take them literally).
fn split_once_unescaped(s: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            return Some((&s[..i], &s[i + c.len_utf8()..]));
        }
    }
    None
}

/// Split at unescaped `sep`; with `quotes`, not inside double quotes (the
/// field set, where string values are quoted).
fn split_unescaped(s: &str, sep: char, quotes: bool) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' if quotes => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_value(v: &str) -> Result<FieldValue> {
    if let Some(i) = v.strip_suffix('i') {
        return Ok(FieldValue::Int(
            i.parse().with_context(|| format!("int {v:?}"))?,
        ));
    }
    if let Some(u) = v.strip_suffix('u') {
        return Ok(FieldValue::UInt(
            u.parse().with_context(|| format!("uint {v:?}"))?,
        ));
    }
    if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Ok(FieldValue::Str(unescape(s)));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    Ok(FieldValue::Float(
        v.parse().with_context(|| format!("field value {v:?}"))?,
    ))
}

pub fn parse_line(line: &str) -> Result<Line> {
    let line = line.trim_end_matches(['\r', '\n']);
    // Quotes only delimit string field values: the head (measurement and tags)
    // ends at the first unescaped space whatever quotes it holds.
    let Some((head, rest)) = split_once_unescaped(line, ' ') else {
        bail!("expected `measurement[,tags] fields [timestamp]`: {line:?}");
    };
    let sections = split_unescaped(rest, ' ', true);
    let (fields, ts) = match sections.as_slice() {
        [f] => (f, None),
        [f, t] => (f, Some(t)),
        _ => bail!("expected `measurement[,tags] fields [timestamp]`: {line:?}"),
    };
    let mut head_parts = split_unescaped(head, ',', false).into_iter();
    let measurement = unescape(&head_parts.next().unwrap_or_default());
    if measurement.is_empty() {
        bail!("empty measurement: {line:?}");
    }
    let mut tags = BTreeMap::new();
    for t in head_parts {
        let kv = split_unescaped(&t, '=', false);
        let [k, v] = kv.as_slice() else {
            bail!("bad tag {t:?} in {line:?}");
        };
        tags.insert(unescape(k), unescape(v));
    }
    let mut field_map = BTreeMap::new();
    for f in split_unescaped(fields, ',', true) {
        let Some((k, v)) = split_once_unescaped(&f, '=') else {
            bail!("bad field {f:?} in {line:?}");
        };
        field_map.insert(unescape(k), parse_value(v)?);
    }
    let timestamp = match ts {
        Some(t) => Some(t.parse().with_context(|| format!("timestamp {t:?}"))?),
        None => None,
    };
    Ok(Line {
        measurement,
        tags,
        fields: field_map,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_sample() {
        let l = parse_line("synproxy,host=myhost conn_reopened=0i,cookie_invalid=235i,cookie_retrans=0i,cookie_valid=8814i,entries=0i,syn_received=8742i 1549550634000000000").unwrap();
        assert_eq!(l.measurement, "synproxy");
        assert_eq!(l.tags["host"], "myhost");
        assert_eq!(l.counter("cookie_invalid").unwrap(), 235);
        assert_eq!(l.counter("cookie_valid").unwrap(), 8814);
        assert_eq!(l.counter("syn_received").unwrap(), 8742);
        assert_eq!(l.counter("entries").unwrap(), 0);
        assert_eq!(l.timestamp, Some(1_549_550_634_000_000_000));
        assert!(l.counter("nope").is_err());
    }

    #[test]
    fn unescapes_tags_and_handles_no_tags() {
        let l = parse_line(r"synproxy,host=my\ host\,x\=1,netns=a syn_received=3i").unwrap();
        assert_eq!(l.tags["host"], "my host,x=1");
        assert_eq!(l.tags["netns"], "a");
        assert_eq!(l.timestamp, None);
        let l = parse_line("synproxy a=1i,b=2u,c=\"x y\",d=t 5").unwrap();
        assert!(l.tags.is_empty());
        assert_eq!(l.fields["b"], FieldValue::UInt(2));
        assert_eq!(l.fields["c"], FieldValue::Str("x y".into()));
        assert!(parse_line("synproxy").is_err());
        assert!(parse_line("synproxy a=zz 1").is_err());
        // Found by fuzzing (fuzz/artifacts/line_protocol): quotes in tags are literal.
        let l = parse_line(r#"synproxy,""="a\ b c=" d=x",e=1i 5"#).unwrap();
        assert_eq!(l.tags["\"\""], "\"a b");
        assert_eq!(l.fields["c"], FieldValue::Str(" d=x".into()));
        assert_eq!(l.fields["e"], FieldValue::Int(1));
    }
}

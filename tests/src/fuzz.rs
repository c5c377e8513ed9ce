//! The bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs` are one-line
//! wrappers around these), kept here so that `cargo test` replays the checked-in
//! corpus and crash reproducers (`fuzz/corpus/<target>/*`, `fuzz/artifacts/<target>/*`)
//! through exactly the same code, without libFuzzer (`tests/tests/fuzz_corpus.rs`).
//!
//! Each function takes the fuzzer's bytes and panics when a property fails.
//! The parsers themselves must never panic, whatever the bytes.

use crate::line_protocol::{parse_line, FieldValue, Line};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::BTreeMap;
use synproxy_common::{Counter, COUNTER_COUNT};
use synproxy_user::fields::{Field, FIELD_COUNT};
use synproxy_user::reconcile::ebpf_vs_proc::Status;
use synproxy_user::sample::{EbpfSample, ProbesSample, Sample};
use synproxy_user::sinks::line_protocol::{
    sanitized_tag, IntegerType, LineEncoder, EBPF_MEASUREMENT, FAMILY_TAG, MEASUREMENT, NETNS_TAG,
    PROBES_MEASUREMENT,
};
use synproxy_user::sources::ebpf::btf::{Btf, KernelOffsets};
use synproxy_user::sources::ebpf::kprobe_events::ProbeStats;
use synproxy_user::sources::proc::tcp_counters::{self, StackField, NETSTAT_FIELDS, SNMP_FIELDS};
use synproxy_user::sources::proc::{conntrack_stat, proc_stat};

/// A target's body: panics when a property fails.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("proc_stat", proc_stat),
    ("proc_stack", proc_stack),
    ("btf", btf),
    ("line_protocol", line_protocol),
    ("influx_response", influx_response),
];

/// `/proc/net/stat/synproxy`: never panics; what it accepts, written back in the
/// kernel's own format (known columns, `%08x`), parses to the same rows.
pub fn proc_stat(data: &[u8]) {
    let Ok(stat) = proc_stat::parse(data) else {
        return;
    };
    let _ = stat.sums();
    let mut text = Field::ALL.map(Field::name).join("\t");
    text.push('\n');
    for row in &stat.cpus {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:08x}")).collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    match proc_stat::parse(text.as_bytes()) {
        Ok(again) => assert_eq!(again, stat, "rewritten as {text:?}"),
        Err(e) => panic!("the canonical form {text:?} does not parse: {e}"),
    }
}

/// The TCP stack's and conntrack's files (`/proc/net/netstat`, `/proc/net/snmp`,
/// `/proc/net/stat/nf_conntrack`, the one-number sysctls): never panic; what
/// the parsers accept, written back in the kernel's format, parses the same.
pub fn proc_stack(data: &[u8]) {
    for fields in [&NETSTAT_FIELDS[..], &SNMP_FIELDS[..]] {
        let Ok(values) = tcp_counters::parse(data, fields) else {
            continue;
        };
        let mut text = String::new();
        for group in ["TcpExt", "Tcp"] {
            let found: Vec<(&StackField, u64)> = fields
                .iter()
                .zip(&values)
                .filter(|(f, _)| f.group == group)
                .filter_map(|(f, v)| Some((f, (*v)?)))
                .collect();
            if found.is_empty() {
                continue;
            }
            let names: Vec<&str> = found.iter().map(|(f, _)| f.name).collect();
            let cells: Vec<String> = found.iter().map(|(_, v)| v.to_string()).collect();
            text.push_str(&format!(
                "{group}: {}\n{group}: {}\n",
                names.join(" "),
                cells.join(" ")
            ));
        }
        if text.is_empty() {
            continue;
        }
        match tcp_counters::parse(text.as_bytes(), fields) {
            Ok(again) => assert_eq!(again, values, "rewritten as {text:?}"),
            Err(e) => panic!("the canonical form {text:?} does not parse: {e}"),
        }
    }
    if let Ok(stat) = conntrack_stat::parse(data) {
        let present: Vec<usize> = (0..conntrack_stat::COLUMN_COUNT)
            .filter(|&i| stat.present[i])
            .collect();
        let names: Vec<&str> = present
            .iter()
            .map(|&i| conntrack_stat::COLUMNS[i])
            .collect();
        let mut text = names.join("  ");
        text.push('\n');
        for row in &stat.cpus {
            let cells: Vec<String> = present.iter().map(|&i| format!("{:08x}", row[i])).collect();
            text.push_str(&cells.join(" "));
            text.push('\n');
        }
        match conntrack_stat::parse(text.as_bytes()) {
            Ok(again) => assert_eq!(again, stat, "rewritten as {text:?}"),
            Err(e) if present.is_empty() => {
                assert!(matches!(e, conntrack_stat::ParseError::EmptyHeader), "{e}")
            }
            Err(e) => panic!("the canonical form {text:?} does not parse: {e}"),
        }
    }
    if let Ok(value) = conntrack_stat::parse_sysctl(data) {
        assert_eq!(
            conntrack_stat::parse_sysctl(format!("{value}\n").as_bytes()),
            Ok(value)
        );
    }
}

/// Names the agent looks up, and some the fuzzer's blobs may hold.
const BTF_LOOKUPS: &[(&str, &str)] = &[
    ("net", "ns"),
    ("ns_common", "inum"),
    ("nf_hook_state", "net"),
    ("sk_buff", "_nfct"),
    ("net", "net_cookie"),
    ("outer", "a"),
    ("outer", "c"),
    ("a", "a"),
    ("a", "b"),
];

/// The BTF reader: never panics (nor loops for long) on any blob; an offset it
/// finds is a byte offset, so at most `u32::MAX / 8`.
pub fn btf(data: &[u8]) {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    for (st, member) in BTF_LOOKUPS {
        if let Ok(offset) = btf.member_offset(st, member) {
            assert!(offset <= u32::MAX / 8, "{st}.{member} at byte {offset}");
        }
    }
    let _ = KernelOffsets::from_btf(&btf);
}

/// What the line protocol target encodes: arbitrary tags, namespace names and values.
#[derive(Debug, Arbitrary)]
struct LineInput {
    static_tags: Vec<(String, String)>,
    netns: Option<String>,
    totals: [u64; FIELD_COUNT],
    events: [u64; COUNTER_COUNT],
    peak_rates: [f64; COUNTER_COUNT],
    status: u8,
    family_ipv6: bool,
    probe_counts: [u64; 8],
    timestamp_ns: u64,
    unsigned: bool,
}

/// The encoder round-tripped through the independent parser
/// ([`crate::line_protocol`]): every line it writes is one line that parses,
/// with the tags the README's escaping rules promise (control characters and
/// trailing backslashes become `_`, empty keys or values drop the tag; of keys
/// equal after that, one value is kept), the values given (signed integers
/// saturate at `i64::MAX`, non-finite or negative rates are 0) and the timestamp
/// (saturated at `i64::MAX`, the largest line protocol can carry).
pub fn line_protocol(data: &[u8]) {
    let Ok(mut input) = LineInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let integers = if input.unsigned {
        IntegerType::Unsigned
    } else {
        IntegerType::Signed
    };
    // The CLI refuses `--tag netns=...` together with `--netns`, the only way a
    // sample gets a namespace name.
    if input.netns.is_some() {
        input
            .static_tags
            .retain(|(k, _)| sanitized_tag(k) != NETNS_TAG);
    }
    let encoder = LineEncoder::new(&input.static_tags, integers);
    let static_tags = expected_tags(&input.static_tags);
    let timestamp = i64::try_from(input.timestamp_ns).unwrap_or(i64::MAX);
    let int = |v: u64| match integers {
        IntegerType::Signed => FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX)),
        IntegerType::Unsigned => FieldValue::UInt(v),
    };
    let with = |tags: &BTreeMap<String, String>, extra: &[(&str, Option<&str>)]| {
        let mut tags = tags.clone();
        for (k, v) in extra {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                tags.insert(k.to_string(), sanitized_tag(v));
            }
        }
        tags
    };

    // `synproxy`
    let sample = Sample {
        netns: input.netns.clone(),
        totals: input.totals,
        timestamp_ns: input.timestamp_ns,
    };
    let mut out = Vec::new();
    encoder.encode(&sample, &mut out);
    let line = one_line(&out);
    assert_eq!(line.measurement, MEASUREMENT);
    let tags = with(&static_tags, &[(NETNS_TAG, input.netns.as_deref())]);
    assert_eq!(line.tags, tags, "{:?}", String::from_utf8_lossy(&out));
    let fields: BTreeMap<String, FieldValue> = Field::ALL
        .into_iter()
        .map(|f| (f.name().to_string(), int(input.totals[f.index()])))
        .collect();
    assert_eq!(line.fields, fields, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(line.timestamp, Some(timestamp));

    // `synproxy_ebpf`
    let status = match input.status % 4 {
        0 => Status::Exact,
        1 => Status::Lagging,
        2 => Status::Missed,
        _ => Status::ProcOnly,
    };
    let family = if input.family_ipv6 { "ipv6" } else { "ipv4" };
    let ebpf = EbpfSample {
        netns: input.netns.clone(),
        family,
        events: input.events,
        peak_rates: input.peak_rates,
        status,
        timestamp_ns: input.timestamp_ns,
    };
    let mut out = Vec::new();
    encoder.encode_ebpf(&ebpf, &mut out);
    let line = one_line(&out);
    assert_eq!(line.measurement, EBPF_MEASUREMENT);
    let tags = with(
        &static_tags,
        &[
            (NETNS_TAG, input.netns.as_deref()),
            (FAMILY_TAG, Some(family)),
        ],
    );
    assert_eq!(line.tags, tags, "{:?}", String::from_utf8_lossy(&out));
    let mut fields = BTreeMap::new();
    for c in Counter::ALL {
        fields.insert(c.name().to_string(), int(input.events[c.index()]));
        let rate = input.peak_rates[c.index()];
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        fields.insert(format!("{}_peak_rate", c.name()), FieldValue::Float(rate));
    }
    fields.insert(
        "reconcile".to_string(),
        FieldValue::Str(status.name().to_string()),
    );
    assert_eq!(line.fields, fields, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(line.timestamp, Some(timestamp));

    // `synproxy_ebpf_probes`
    let [hits, missed, a, b, c, d, e, f] = input.probe_counts;
    let probe_type = if input.family_ipv6 {
        "fentry"
    } else {
        "kprobe"
    };
    let probes = ProbesSample {
        attached: input.family_ipv6,
        probe_type,
        probe_misses: a,
        recursion_misses: b,
        program_recursion: vec![("syn", c)],
        map_bytes: d,
        probes: vec![("ack4_ret", ProbeStats { hits, missed })],
        diag: [e, f, a, b],
        // Per-source map fields with the IPv6 half of the inputs.
        sources: input
            .family_ipv6
            .then_some(synproxy_user::sample::SourceMapStats {
                entries: a,
                capacity: c as u32,
                evictions: e,
                insert_failures: f,
                map_bytes: d,
            }),
        // The per-port map's with the IPv4 half.
        ports: (!input.family_ipv6).then_some(synproxy_user::sample::SourceMapStats {
            entries: b,
            capacity: a as u32,
            evictions: f,
            insert_failures: e,
            map_bytes: c,
        }),
        timestamp_ns: input.timestamp_ns,
    };
    let mut out = Vec::new();
    encoder.encode_probes(&probes, &mut out);
    let line = one_line(&out);
    assert_eq!(line.measurement, PROBES_MEASUREMENT);
    assert_eq!(
        line.tags,
        static_tags,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(line.fields.get("ack4_ret_hits"), Some(&int(hits)));
    assert_eq!(line.fields.get("ack4_ret_missed"), Some(&int(missed)));
    assert_eq!(line.fields.get("syn_recursion_misses"), Some(&int(c)));
    assert_eq!(line.fields.get("map_bytes"), Some(&int(d)));
    let source_evictions = line.fields.get("source_evictions");
    if input.family_ipv6 {
        assert_eq!(source_evictions, Some(&int(e)));
        assert_eq!(
            line.fields.get("source_map_capacity"),
            Some(&int(u64::from(c as u32)))
        );
    } else {
        assert_eq!(source_evictions, None);
    }
    assert_eq!(
        line.fields.get("probe_type"),
        Some(&FieldValue::Str(probe_type.to_string()))
    );
    assert_eq!(
        line.fields.get("attached"),
        Some(&int(u64::from(input.family_ipv6)))
    );
    assert_eq!(line.timestamp, Some(timestamp));
}

/// Static tags as a parser reads them back: non-empty keys and values,
/// sanitized; of raw keys that sanitize alike the encoder keeps one (the value
/// it sorts first), so any of their values is accepted by [`matches_one_of`].
fn expected_tags(raw: &[(String, String)]) -> BTreeMap<String, String> {
    let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in raw.iter().filter(|(k, v)| !k.is_empty() && !v.is_empty()) {
        candidates
            .entry(sanitized_tag(k))
            .or_default()
            .push(sanitized_tag(v));
    }
    // The encoder sorts escaped values; escaping keeps the order of sanitized
    // values except around the escaped characters, so pick by the escaped form.
    candidates
        .into_iter()
        .filter_map(|(k, values)| {
            let chosen = values
                .into_iter()
                .min_by(|a, b| escaped(a).cmp(&escaped(b)))?;
            Some((k, chosen))
        })
        .collect()
}

/// A sanitized value in the escaped form the encoder sorts by.
fn escaped(sanitized: &str) -> String {
    let mut out = String::with_capacity(sanitized.len());
    for c in sanitized.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The single line in `out`: UTF-8, ends with a newline, no other newline, parses.
fn one_line(out: &[u8]) -> Line {
    let text = match std::str::from_utf8(out) {
        Ok(text) => text,
        Err(e) => panic!("encoder wrote invalid UTF-8 ({e}): {out:?}"),
    };
    let Some(body) = text.strip_suffix('\n') else {
        panic!("no trailing newline: {text:?}");
    };
    assert!(
        !body.contains(['\n', '\r']),
        "line break inside the line: {text:?}"
    );
    let line = match parse_line(body) {
        Ok(line) => line,
        Err(e) => panic!("{e:#}: {text:?}"),
    };
    // The parser keeps the last of repeated tag keys: count them in the text.
    assert_eq!(
        tag_count(body),
        line.tags.len(),
        "repeated tag key: {text:?}"
    );
    line
}

/// Tags in a line: unescaped commas before the first unescaped space.
fn tag_count(line: &str) -> usize {
    let mut count = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            ',' => count += 1,
            ' ' => break,
            _ => {}
        }
    }
    count
}

/// The InfluxDB writer's reading of an answer: the bytes are what the server
/// sends back on the connection, read by hyper's HTTP/1 client (the parser the
/// writer uses) and then by the writer's `read_answer`. Never panics nor hangs;
/// a 2xx is written, a 429 or 5xx retried with the `Retry-After` RFC 9110 gives
/// (digits only, capped), 413 halves the batch, any other status drops it; the
/// message is one non-empty line without control characters, cut at
/// `MAX_MESSAGE_CHARS`.
pub fn influx_response(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(runtime) => runtime,
            Err(e) => panic!("cannot build a tokio runtime: {e}"),
        };
    }
    RUNTIME.with(|runtime| runtime.block_on(influx_exchange(data)));
}

async fn influx_exchange(data: &[u8]) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use synproxy_user::sinks::influx::{read_answer, Outcome, MAX_MESSAGE_CHARS, MAX_RETRY_AFTER};
    use tokio::io::AsyncWriteExt;

    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(
        hyper_util::rt::TokioIo::new(client_io),
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => panic!("handshake over an in-memory pipe: {e}"),
    };
    let connection = tokio::spawn(connection);
    // The whole answer, then end of stream: a body that claims more ends early.
    let answer = data.to_vec();
    let server = tokio::spawn(async move {
        let _ = server_io.write_all(&answer).await;
        let _ = server_io.shutdown().await;
        // Keep the pipe until the client is done reading, so the request
        // can still be written into it.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut server_io, &mut sink).await;
    });
    let request = match hyper::Request::post("/api/v2/write?bucket=b&org=o&precision=ns").body(
        Full::new(Bytes::from_static(b"synproxy syn_received=1i 1\n")),
    ) {
        Ok(request) => request,
        Err(e) => panic!("request: {e}"),
    };
    let Ok(response) = sender.send_request(request).await else {
        // Not an HTTP answer hyper takes: the writer retries (connection error).
        drop(sender);
        let _ = connection.await;
        let _ = server.await;
        return;
    };
    let status = response.status();
    let expected_retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .map(|v| v.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| {
            // Decided on the decimal string, so any number of digits works.
            let digits = v.trim_start_matches('0');
            let seconds = match digits.len() {
                0 => 0,
                1..=3 => digits.bytes().fold(0, |n, d| n * 10 + u64::from(d - b'0')),
                _ => u64::MAX,
            };
            std::time::Duration::from_secs(seconds).min(MAX_RETRY_AFTER)
        });
    let outcome = read_answer(response).await;
    drop(sender);
    let _ = connection.await;
    let _ = server.await;

    let describe = |status: hyper::StatusCode| match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    let check_message = |message: &str| {
        assert!(!message.is_empty(), "empty message for {status}");
        assert!(
            !message.chars().any(char::is_control),
            "control character in {message:?}"
        );
        assert!(
            message.chars().count() <= MAX_MESSAGE_CHARS + 3,
            "message of {} characters",
            message.chars().count()
        );
    };
    match outcome {
        Outcome::Written => assert!(status.is_success(), "{status} taken as written"),
        Outcome::Retry {
            reason,
            retry_after,
        } => {
            assert!(
                status.as_u16() == 429 || status.is_server_error(),
                "{status} retried"
            );
            assert_eq!(
                retry_after, expected_retry_after,
                "Retry-After for {status}"
            );
            let message = reason
                .strip_prefix(&format!("the server answered {}", describe(status)))
                .and_then(|rest| rest.strip_prefix(": "));
            match message {
                Some(message) => check_message(message),
                None => panic!("{reason:?} does not name {status}"),
            }
        }
        Outcome::TooLarge { message } => {
            assert_eq!(status.as_u16(), 413);
            check_message(&message);
        }
        Outcome::Rejected {
            status: code,
            message,
        } => {
            assert_eq!(code, status.as_u16());
            assert!(
                !status.is_success() && code != 429 && code != 413 && !status.is_server_error(),
                "{status} rejected"
            );
            check_message(&message);
        }
    }
}

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("fixture {path}: {e}"),
    }
}

fn value(fields: &[StackField], values: &[Option<u64>], name: &str) -> Option<u64> {
    let i = fields.iter().position(|f| f.name == name).unwrap();
    values[i]
}

#[test]
fn real_netstat_of_a_6_18_kernel() {
    let values = parse(&fixture("netstat_6.18"), &NETSTAT_FIELDS).unwrap();
    // Every reported field exists on this kernel.
    assert!(values.iter().all(Option::is_some), "{values:?}");
    assert_eq!(value(&NETSTAT_FIELDS, &values, "TCPTimeouts"), Some(5));
    assert_eq!(value(&NETSTAT_FIELDS, &values, "SyncookiesSent"), Some(0));
}

#[test]
fn real_snmp_of_a_6_18_kernel() {
    // `MaxConn` is -1 (signed) and not reported: no error.
    let values = parse(&fixture("snmp_6.18"), &SNMP_FIELDS).unwrap();
    assert!(values.iter().all(Option::is_some), "{values:?}");
    assert_eq!(value(&SNMP_FIELDS, &values, "ActiveOpens"), Some(17152));
    assert_eq!(value(&SNMP_FIELDS, &values, "PassiveOpens"), Some(14282));
    assert_eq!(value(&SNMP_FIELDS, &values, "CurrEstab"), Some(0));
    assert_eq!(value(&SNMP_FIELDS, &values, "OutRsts"), Some(3697));
    assert_eq!(value(&SNMP_FIELDS, &values, "InCsumErrors"), Some(0));
}

#[test]
fn fields_are_found_by_name_not_position() {
    let text =
        b"IpExt: InOctets\nIpExt: 12\nTcpExt: ListenDrops Foo SyncookiesSent\nTcpExt: 7 -3 9\n";
    let values = parse(text, &NETSTAT_FIELDS).unwrap();
    assert_eq!(value(&NETSTAT_FIELDS, &values, "SyncookiesSent"), Some(9));
    assert_eq!(value(&NETSTAT_FIELDS, &values, "ListenDrops"), Some(7));
    // Not in this (older) kernel's file: absent, not 0.
    assert_eq!(value(&NETSTAT_FIELDS, &values, "TCPReqQFullDrop"), None);
}

#[test]
fn other_groups_do_not_count() {
    // `Udp: InErrors` is not `Tcp: InErrs`; a repeated group is ignored.
    let text = b"Udp: InErrs\nUdp: 5\nTcp: InErrs\nTcp: 6\nTcp: InErrs\nTcp: 8\n";
    let values = parse(text, &SNMP_FIELDS).unwrap();
    assert_eq!(value(&SNMP_FIELDS, &values, "InErrs"), Some(6));
}

#[test]
fn huge_numbers() {
    let max = format!("Tcp: InSegs OutSegs\nTcp: {} 0\n", u64::MAX);
    let values = parse(max.as_bytes(), &SNMP_FIELDS).unwrap();
    assert_eq!(value(&SNMP_FIELDS, &values, "InSegs"), Some(u64::MAX));
    let err = parse(b"Tcp: InSegs\nTcp: 18446744073709551616\n", &SNMP_FIELDS).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2, column 2: invalid value \"18446744073709551616\": wider than 64 bits"
    );
}

#[test]
fn non_numeric_and_negative_values_of_reported_fields() {
    let err = parse(b"Tcp: MaxConn InSegs\nTcp: -1 x1\n", &SNMP_FIELDS).unwrap_err();
    assert_eq!(
        err,
        ParseError::InvalidValue {
            line: 2,
            column: 3,
            value: "x1".into(),
            reason: "not an unsigned decimal"
        }
    );
    let err = parse(b"Tcp: InSegs\nTcp: -4\n", &SNMP_FIELDS).unwrap_err();
    assert!(err.to_string().contains("not an unsigned decimal"), "{err}");
}

#[test]
fn mismatched_header_and_value_counts() {
    let err = parse(b"Tcp: InSegs OutSegs\nTcp: 1\n", &SNMP_FIELDS).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: invalid number of columns in data, expected 2 found 1"
    );
    let err = parse(b"Tcp: InSegs\nTcp: 1 2 3\n", &SNMP_FIELDS).unwrap_err();
    assert!(matches!(
        err,
        ParseError::ColumnCount {
            expected: 1,
            found: 3,
            ..
        }
    ));
}

#[test]
fn truncated_files() {
    // Cut after the header line, and inside the value line.
    let full = fixture("netstat_6.18");
    let first_newline = full.iter().position(|&b| b == b'\n').unwrap();
    let err = parse(&full[..=first_newline], &NETSTAT_FIELDS).unwrap_err();
    assert_eq!(err, ParseError::Unpaired { line: 1 });
    let err = parse(&full[..first_newline + 40], &NETSTAT_FIELDS).unwrap_err();
    assert!(
        matches!(err, ParseError::ColumnCount { line: 2, .. }),
        "{err}"
    );
    assert_eq!(parse(b"", &NETSTAT_FIELDS), Err(ParseError::Empty));
}

#[test]
fn lines_out_of_pairs() {
    let err = parse(b"TcpExt: A\nIpExt: 1\n", &NETSTAT_FIELDS).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: value line \"IpExt:\" does not follow its header \"TcpExt:\""
    );
    assert_eq!(
        parse(b"SyncookiesSent 1\n", &NETSTAT_FIELDS),
        Err(ParseError::NoPrefix { line: 1 })
    );
    assert_eq!(
        parse(b": A\n: 1\n", &NETSTAT_FIELDS),
        Err(ParseError::NoPrefix { line: 1 })
    );
}

#[test]
fn binary_garbage() {
    assert_eq!(
        parse(b"TcpExt: \x00\xff", &NETSTAT_FIELDS),
        Err(ParseError::NotText {
            file: "TCP counter",
            offset: 8
        })
    );
}

#[test]
fn long_values_are_truncated_in_errors() {
    let text = format!("Tcp: InSegs\nTcp: {}\n", "9".repeat(200));
    let msg = parse(text.as_bytes(), &SNMP_FIELDS)
        .unwrap_err()
        .to_string();
    assert!(msg.len() < 100, "{msg}");
    assert!(msg.contains("..."), "{msg}");
}

#[test]
fn field_names_are_telegrafs() {
    assert_eq!(NETSTAT_FIELDS[0].field_name(), "TcpExtSyncookiesSent");
    assert_eq!(SNMP_FIELDS[0].field_name(), "TcpActiveOpens");
    let mut metrics: Vec<&str> = NETSTAT_FIELDS
        .iter()
        .chain(&SNMP_FIELDS)
        .map(|f| f.metric)
        .collect();
    metrics.sort_unstable();
    metrics.dedup();
    assert_eq!(metrics.len(), NETSTAT_FIELDS.len() + SNMP_FIELDS.len());
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = parse(&bytes, &NETSTAT_FIELDS);
        let _ = parse(&bytes, &SNMP_FIELDS);
    }

    #[test]
    fn never_panics_on_near_valid_text(s in "(TcpExt:|Tcp:|SyncookiesSent|InSegs|[0-9-]{0,22}|[ \t\n])*") {
        let _ = parse(s.as_bytes(), &NETSTAT_FIELDS);
        let _ = parse(s.as_bytes(), &SNMP_FIELDS);
    }

    #[test]
    fn values_round_trip(values in proptest::collection::vec(proptest::num::u64::ANY, SNMP_FIELDS.len())) {
        let names: Vec<&str> = SNMP_FIELDS.iter().rev().map(|f| f.name).collect();
        let cells: Vec<String> = values.iter().rev().map(u64::to_string).collect();
        let text = format!("Tcp: {}\nTcp: {}\n", names.join(" "), cells.join(" "));
        let parsed = parse(text.as_bytes(), &SNMP_FIELDS).unwrap();
        let expected: Vec<Option<u64>> = values.into_iter().map(Some).collect();
        proptest::prop_assert_eq!(parsed, expected);
    }
}

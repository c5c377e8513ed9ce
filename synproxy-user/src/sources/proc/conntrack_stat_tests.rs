use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("fixture {path}: {e}"),
    }
}

fn col(name: &str) -> usize {
    COLUMNS.iter().position(|c| *c == name).unwrap()
}

fn sum(stat: &ConntrackStat, name: &str) -> u64 {
    stat.cpus.iter().map(|r| u64::from(r[col(name)])).sum()
}

/// A 4.19 kernel's layout (old names), two CPUs.
const OLD: &[u8] = b"entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000002a  00000000 0000000f 00000000 00000003 00000019 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000001
0000002a  00000000 00000004 00000000 00000005 00000002 00000000 00000000 00000000 00000001 00000002 00000000 00000001  00000000 00000000 00000000 00000000
";

#[test]
fn real_file_of_a_6_18_kernel() {
    let stat = parse(&fixture("nf_conntrack_6.18_2cpu")).unwrap();
    assert_eq!(stat.cpus.len(), 2);
    assert!(stat.present[col("clashres")] && stat.present[col("chainlength")]);
    assert!(!stat.present[col("searched")] && !stat.present[col("delete_list")]);
    assert_eq!(stat.entries(), Some(0));
}

#[test]
fn old_names_and_entries_is_not_summed() {
    let stat = parse(OLD).unwrap();
    assert!(stat.present[col("searched")] && !stat.present[col("clashres")]);
    // Every row repeats the table size: 42, not 84.
    assert_eq!(stat.entries(), Some(42));
    assert_eq!(sum(&stat, "found"), 19);
    assert_eq!(sum(&stat, "invalid"), 8);
    assert_eq!(sum(&stat, "ignore"), 27);
    assert_eq!(sum(&stat, "drop"), 2);
    assert_eq!(sum(&stat, "insert_failed"), 1);
    assert_eq!(sum(&stat, "search_restart"), 1);
    assert_eq!(sum(&stat, "icmp_error"), 1);
}

#[test]
fn renamed_columns_keep_their_own_names() {
    let text = b"entries clashres chainlength drop\n1 5 6 7\n";
    let stat = parse(text).unwrap();
    assert_eq!(sum(&stat, "clashres"), 5);
    assert_eq!(sum(&stat, "chainlength"), 6);
    assert_eq!(sum(&stat, "searched"), 0);
    assert!(!stat.present[col("searched")]);
}

#[test]
fn unknown_columns_are_ignored_and_reordering_is_fine() {
    let stat = parse(b"drop  future_column entries\n2 ffffffff 3\n").unwrap();
    assert_eq!(sum(&stat, "drop"), 2);
    assert_eq!(stat.entries(), Some(3));
}

#[test]
fn no_entries_column() {
    let stat = parse(b"drop\n2\n").unwrap();
    assert_eq!(stat.entries(), None);
}

#[test]
fn huge_and_non_numeric_values() {
    let err = parse(b"entries drop\n0 100000000\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2, column 2: invalid value \"100000000\": wider than 32 bits"
    );
    let err = parse(b"entries drop\n0 zz\n").unwrap_err();
    assert!(matches!(
        err,
        ParseError::InvalidValue {
            line: 2,
            column: 2,
            reason: "not hexadecimal",
            ..
        }
    ));
    let stat = parse(b"drop\nffffffff\nffffffff\n").unwrap();
    assert_eq!(sum(&stat, "drop"), 2 * u64::from(u32::MAX));
}

#[test]
fn truncated_and_mismatched_rows() {
    let full = fixture("nf_conntrack_6.18_2cpu");
    let cut = &full[..full.len() - 30];
    let err = parse(cut).unwrap_err();
    assert!(
        matches!(
            err,
            ParseError::ColumnCount {
                line: 3,
                expected: 17,
                ..
            }
        ),
        "{err}"
    );
    let err = parse(b"entries drop\n0 1 2\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: invalid number of columns in data, expected 2 found 3"
    );
    let err = parse(b"entries drop\n0 1\n\n0 1\n").unwrap_err();
    assert_eq!(
        err,
        ParseError::ColumnCount {
            line: 3,
            expected: 2,
            found: 0
        }
    );
}

#[test]
fn empty_headerless_and_binary() {
    assert_eq!(parse(b""), Err(ParseError::Empty));
    assert_eq!(parse(b" \n00000000\n"), Err(ParseError::EmptyHeader));
    assert_eq!(
        parse(b"entries\n\x00"),
        Err(ParseError::NotText {
            file: "conntrack stat",
            offset: 8
        })
    );
    let stat = parse(b"entries\n").unwrap();
    assert!(stat.cpus.is_empty());
    assert_eq!(stat.entries(), Some(0));
}

#[test]
fn sysctl_values() {
    assert_eq!(parse_sysctl(b"262144\n"), Ok(262_144));
    assert_eq!(parse_sysctl(b"  7 \n"), Ok(7));
    assert_eq!(parse_sysctl(b"\n"), Err(SysctlError::Empty));
    assert_eq!(
        parse_sysctl(b"-1\n").unwrap_err().to_string(),
        "invalid value \"-1\": not one unsigned decimal"
    );
    assert!(parse_sysctl(b"1 2\n").is_err());
    assert!(parse_sysctl(b"99999999999999999999\n").is_err());
    assert!(parse_sysctl(&[b'9'; 100])
        .unwrap_err()
        .to_string()
        .contains("..."));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = parse(&bytes);
        let _ = parse_sysctl(&bytes);
    }

    #[test]
    fn never_panics_on_near_valid_text(s in "(entries|drop|clashres|[0-9a-fA-Fxz]{0,10}|[ \t\n])*") {
        let _ = parse(s.as_bytes());
    }

    #[test]
    fn sums_match_rows(rows in proptest::collection::vec(proptest::array::uniform3(proptest::num::u32::ANY), 0..32)) {
        let mut text = String::from("entries  drop early_drop\n");
        for row in &rows {
            text.push_str(&format!("{:08x}  {:08x} {:08x}\n", row[0], row[1], row[2]));
        }
        let stat = parse(text.as_bytes()).unwrap();
        let expected: u64 = rows.iter().map(|r| u64::from(r[1])).sum();
        proptest::prop_assert_eq!(sum(&stat, "drop"), expected);
        proptest::prop_assert_eq!(stat.entries(), Some(rows.first().map_or(0, |r| r[0])));
    }
}

//! Pure parser for `/proc/net/stat/synproxy`: bytes in, per-CPU counters or a
//! typed error out. No I/O here; [`super::proc_file`] attaches the path.
//!
//! Format: a header naming the columns, then one row of `%08x` values per
//! possible CPU. Columns are matched by header name, as Telegraf does: unknown
//! columns are ignored, missing known columns read as 0, and every row must
//! have as many columns as the header.

use super::text_scan::echo;
use crate::fields::{Field, Values, FIELD_COUNT};

/// The per-CPU rows of one read of the file, in CPU order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub cpus: Vec<Values<u32>>,
}

impl ProcStat {
    /// True 64-bit sums over all CPUs (never a wrapping u32 sum).
    pub fn sums(&self) -> Values<u64> {
        let mut sums = [0u64; FIELD_COUNT];
        for row in &self.cpus {
            for (sum, value) in sums.iter_mut().zip(row) {
                *sum += u64::from(*value);
            }
        }
        sums
    }
}

pub use super::text_scan::ParseError;

pub fn parse(bytes: &[u8]) -> Result<ProcStat, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(offset) = first_non_text(bytes) {
        return Err(ParseError::NotText {
            file: "synproxy stat",
            offset,
        });
    }

    let header_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    // Header position -> slot in the row: a field's index, or IGNORED.
    let slots: Vec<usize> = bytes[..header_end]
        .split(|&b| is_space(b))
        .filter(|token| !token.is_empty())
        .map(|name| Field::from_name(name).map_or(IGNORED, Field::index))
        .collect();
    if slots.is_empty() {
        return Err(ParseError::EmptyHeader);
    }

    let body = bytes.get(header_end + 1..).unwrap_or_default();
    let mut stat = ProcStat {
        cpus: Vec::with_capacity(body.len() / (9 * slots.len()) + 1),
    };
    let mut line_no = 1;
    let mut pending_blank = false;
    let mut pos = 0;
    while pos < body.len() {
        line_no += 1;
        let mut row = [0u32; FIELD_COUNT + 1];
        let (found, next) = parse_row(body, pos, &slots, &mut row, line_no)?;
        pos = next;
        if found == 0 {
            // The file ends with a newline; a blank line anywhere else is malformed.
            pending_blank = true;
            continue;
        }
        if pending_blank {
            return Err(ParseError::ColumnCount {
                line: line_no - 1,
                expected: slots.len(),
                found: 0,
            });
        }
        if found != slots.len() {
            return Err(ParseError::ColumnCount {
                line: line_no,
                expected: slots.len(),
                found,
            });
        }
        let mut values = [0u32; FIELD_COUNT];
        values.copy_from_slice(&row[..FIELD_COUNT]);
        stat.cpus.push(values);
    }
    Ok(stat)
}

/// Row slot for a column we do not report (the spare last element).
const IGNORED: usize = FIELD_COUNT;

/// Hex digit value per byte; 0xFF for anything else.
static HEX: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r'
}

/// Parses the row starting at `pos` up to its newline into `row`; returns the
/// number of columns found and where the next row starts.
fn parse_row(
    body: &[u8],
    mut pos: usize,
    slots: &[usize],
    row: &mut [u32; FIELD_COUNT + 1],
    line_no: usize,
) -> Result<(usize, usize), ParseError> {
    let mut found = 0;
    while pos < body.len() {
        let b = body[pos];
        if b == b'\n' {
            return Ok((found, pos + 1));
        }
        if is_space(b) {
            pos += 1;
            continue;
        }
        let token_end = pos + 8;
        let mut fast = None;
        if token_end <= body.len()
            && body
                .get(token_end)
                .is_none_or(|&b| b == b'\n' || is_space(b))
        {
            // The kernel's `%08x`: eight digits, decoded without a length loop.
            let mut value = 0u32;
            let mut invalid = 0u8;
            for &digit in &body[pos..token_end] {
                let d = HEX[usize::from(digit)];
                invalid |= d;
                value = (value << 4) | u32::from(d & 0x0F);
            }
            if invalid & 0xF0 == 0 {
                fast = Some(value);
            }
        }
        let value = match fast {
            Some(value) => {
                pos = token_end;
                value
            }
            None => {
                // Any other shape (or an error to report precisely).
                let len = body[pos..]
                    .iter()
                    .position(|&b| b == b'\n' || is_space(b))
                    .unwrap_or(body.len() - pos);
                let token = &body[pos..pos + len];
                pos += len;
                parse_hex_u32(token)
                    .map_err(|reason| invalid_value(line_no, found, token, reason))?
            }
        };
        if let Some(&slot) = slots.get(found) {
            row[slot] = value;
        }
        found += 1;
    }
    Ok((found, pos))
}

fn invalid_value(line: usize, index: usize, token: &[u8], reason: &'static str) -> ParseError {
    ParseError::InvalidValue {
        line,
        column: index + 1,
        value: echo(token),
        reason,
    }
}

/// Offset of the first byte that cannot appear in the stat file. Scans in
/// blocks without an early exit per byte so the check vectorises.
fn first_non_text(bytes: &[u8]) -> Option<usize> {
    let is_text = super::text_scan::is_text;
    bytes.chunks(64).enumerate().find_map(|(block, chunk)| {
        if chunk.iter().fold(true, |ok, &b| ok & is_text(b)) {
            None
        } else {
            chunk
                .iter()
                .position(|&b| !is_text(b))
                .map(|i| block * 64 + i)
        }
    })
}

fn parse_hex_u32(token: &[u8]) -> Result<u32, &'static str> {
    let mut value: u64 = 0;
    for &b in token {
        let digit = HEX[usize::from(b)];
        if digit > 15 {
            return Err("not hexadecimal");
        }
        value = (value << 4) | u64::from(digit);
        if value > u64::from(u32::MAX) {
            return Err("wider than 32 bits");
        }
    }
    Ok(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::Field::Entries;
    use synproxy_common::Counter::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => panic!("fixture {path}: {e}"),
        }
    }

    fn sum(stat: &ProcStat, field: impl Into<Field>) -> u64 {
        stat.sums()[field.into().index()]
    }

    #[test]
    fn normal_eight_cpus() {
        let stat = parse(&fixture("normal_8cpu")).unwrap();
        assert_eq!(stat.cpus.len(), 8);
        assert_eq!(sum(&stat, Entries), 0);
        assert_eq!(sum(&stat, SynReceived), 254_587);
        assert_eq!(sum(&stat, CookieInvalid), 84_286);
        assert_eq!(sum(&stat, CookieValid), 251_855);
        assert_eq!(sum(&stat, CookieRetrans), 0);
        assert_eq!(sum(&stat, ConnReopened), 0);
    }

    #[test]
    fn overflow_is_a_true_u64_sum() {
        // Telegraf reports 4 here (u32 wrap); the real total is 2^32 + 4.
        let stat = parse(&fixture("overflow_2cpu")).unwrap();
        assert_eq!(sum(&stat, SynReceived), 4_294_967_300);
        assert_eq!(sum(&stat, CookieValid), 4_294_967_300);
        assert_eq!(sum(&stat, CookieInvalid), 0x1_d000_0009);
    }

    #[test]
    fn extended_header_ignores_unknown_column() {
        let stat = parse(&fixture("extended")).unwrap();
        assert_eq!(stat.cpus.len(), 8);
        assert_eq!(sum(&stat, SynReceived), 254_587);
        assert_eq!(sum(&stat, CookieInvalid), 84_286);
        assert_eq!(sum(&stat, CookieValid), 251_855);
    }

    #[test]
    fn altered_header_reordered_and_missing_column() {
        let stat = parse(&fixture("altered")).unwrap();
        assert_eq!(stat.cpus.len(), 8);
        assert_eq!(sum(&stat, SynReceived), 254_587);
        assert_eq!(sum(&stat, CookieValid), 251_855);
        assert_eq!(sum(&stat, CookieInvalid), 84_286);
        // cookie_retrans is missing from this header: reads as 0.
        assert_eq!(sum(&stat, CookieRetrans), 0);
    }

    #[test]
    fn header_row_mismatch() {
        let err = parse(&fixture("mismatch")).unwrap_err();
        assert_eq!(
            err,
            ParseError::ColumnCount {
                line: 2,
                expected: 5,
                found: 6
            }
        );
        assert!(err
            .to_string()
            .contains("invalid number of columns in data, expected 5 found 6"));
    }

    #[test]
    fn invalid_hex() {
        let err = parse(&fixture("invalid_hex")).unwrap_err();
        assert!(matches!(
            err,
            ParseError::InvalidValue { line: 2, column: 1, ref value, reason: "not hexadecimal" } if value == "entries"
        ));
        assert_eq!(
            err.to_string(),
            "line 2, column 1: invalid value \"entries\": not hexadecimal"
        );
    }

    #[test]
    fn wider_than_32_bits() {
        let err = parse(b"entries\tsyn_received\n00000000\t100000000\n").unwrap_err();
        assert!(matches!(
            err,
            ParseError::InvalidValue {
                reason: "wider than 32 bits",
                ..
            }
        ));
        // Leading zeros are still 32 bits.
        let stat = parse(b"entries\tsyn_received\n0\t0000000000ffffffff\n").unwrap();
        assert_eq!(sum(&stat, SynReceived), 0xffff_ffff);
    }

    #[test]
    fn empty_and_headerless() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"\n00000000\n"), Err(ParseError::EmptyHeader));
        assert_eq!(parse(b"  \t \n"), Err(ParseError::EmptyHeader));
    }

    #[test]
    fn header_only_reports_zeros() {
        let stat = parse(b"entries\t\tsyn_received\n").unwrap();
        assert!(stat.cpus.is_empty());
        assert_eq!(stat.sums(), [0; FIELD_COUNT]);
    }

    #[test]
    fn binary_garbage() {
        assert_eq!(
            parse(b"entries\x00\xff\x13"),
            Err(ParseError::NotText {
                file: "synproxy stat",
                offset: 7
            })
        );
    }

    #[test]
    fn spaces_tabs_and_crlf() {
        let stat =
            parse(b"entries  syn_received \t cookie_valid\r\n0 a\t\t1\r\n00000000 0000000b 2\r\n")
                .unwrap();
        assert_eq!(sum(&stat, SynReceived), 21);
        assert_eq!(sum(&stat, CookieValid), 3);
    }

    #[test]
    fn blank_line_inside_rows_is_an_error() {
        let err = parse(b"entries\tsyn_received\n0\t1\n\n0\t2\n").unwrap_err();
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
    fn real_kernel_file_two_cpus_idle() {
        let stat = parse(&fixture("kernel_6.18_2cpu_idle")).unwrap();
        assert_eq!(stat.cpus.len(), 2);
        assert_eq!(stat.sums(), [0; FIELD_COUNT]);
    }

    #[test]
    fn real_kernel_file_after_traffic() {
        // Captured from a server netns after the xt scenarios (IPv4 and IPv6).
        let stat = parse(&fixture("kernel_6.18_2cpu_traffic")).unwrap();
        assert_eq!(stat.cpus.len(), 2);
        assert_eq!(stat.sums(), [0, 21, 6, 18, 3, 3]);
        assert_eq!(stat.cpus[1][Field::from(ConnReopened).index()], 0);
        assert_eq!(stat.cpus[1][Field::from(CookieRetrans).index()], 3);
    }

    #[test]
    fn long_values_are_truncated_in_errors() {
        let long = "z".repeat(100);
        let input = format!("entries\n{long}\n");
        let msg = parse(input.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 80, "{msg}");
        assert!(msg.contains("..."));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_near_valid_text(s in "(entries|syn_received|cookie_valid|[0-9a-fA-Fxz]{0,10}|[ \t\n])*") {
            let _ = parse(s.as_bytes());
        }

        #[test]
        fn any_spacing_and_width_parses_the_same(
            rows in proptest::collection::vec(proptest::array::uniform6((proptest::num::u32::ANY, 0usize..4, 0usize..3)), 1..16),
        ) {
            let seps = [" ", "\t", "  \t", "\t\t"];
            let mut text = String::from("entries  syn_received\tcookie_invalid cookie_valid\tcookie_retrans\tconn_reopened\n");
            for row in &rows {
                for (i, (value, sep, width)) in row.iter().enumerate() {
                    if i > 0 {
                        text.push_str(seps[*sep]);
                    }
                    match width {
                        0 => text.push_str(&format!("{value:x}")),
                        1 => text.push_str(&format!("{value:08x}")),
                        _ => text.push_str(&format!("{value:010X}")),
                    }
                }
                text.push_str(if rows.len() % 2 == 0 { "\n" } else { "\r\n" });
            }
            let stat = parse(text.as_bytes()).unwrap();
            let expected: Vec<[u32; 6]> = rows.iter().map(|r| r.map(|(v, _, _)| v)).collect();
            proptest::prop_assert_eq!(stat.cpus, expected);
        }

        #[test]
        fn sums_match_rows(rows in proptest::collection::vec(proptest::array::uniform6(proptest::num::u32::ANY), 0..64)) {
            let mut text = String::from("entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n");
            for row in &rows {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:08x}")).collect();
                text.push_str(&cells.join("\t"));
                text.push('\n');
            }
            let stat = parse(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(&stat.cpus, &rows);
            let expected: u64 = rows.iter().map(|r| u64::from(r[1])).sum();
            proptest::prop_assert_eq!(stat.sums()[1], expected);
        }
    }
}

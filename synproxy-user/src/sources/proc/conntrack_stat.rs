//! Pure parsers for conntrack's statistics: `/proc/net/stat/nf_conntrack`
//! (a header, then one row of `%08x` values per possible CPU, like the
//! SYNPROXY file) and the one-number files `nf_conntrack_count` and
//! `nf_conntrack_max` under `/proc/sys/net/netfilter`. No I/O here.
//!
//! Columns are matched by header name. Their names changed over the years:
//! `searched` became `clashres` (clash resolutions) and `delete_list`
//! became `chainlength` (lookups that found a chain too long), and `new`,
//! `ignore`, `delete` are printed as constant 0 on current kernels. Each
//! known name is its own field, so a renamed column is never reported
//! under its old meaning; a column the header does not name is absent.
//! `entries` is the namespace's table size, repeated on every row: a gauge,
//! taken from the first row, never summed.

use super::text_scan::{echo, is_text, tokens};

/// Every column name the kernel has printed, Telegraf's `inputs.conntrack`
/// names first (its field names), then the renamed ones.
pub const COLUMNS: [&str; COLUMN_COUNT] = [
    "entries",
    "searched",
    "found",
    "new",
    "invalid",
    "ignore",
    "delete",
    "delete_list",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "icmp_error",
    "expect_new",
    "expect_create",
    "expect_delete",
    "search_restart",
    "clashres",
    "chainlength",
];

pub const COLUMN_COUNT: usize = 19;

/// Index of `entries` in [`COLUMNS`] (a gauge, not a counter).
pub const ENTRIES: usize = 0;

/// The rows of one read, in CPU order, by [`COLUMNS`] index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConntrackStat {
    /// Which columns the header names.
    pub present: [bool; COLUMN_COUNT],
    pub cpus: Vec<[u32; COLUMN_COUNT]>,
}

impl ConntrackStat {
    /// The table size (`entries` of the first row), if the file has it.
    pub fn entries(&self) -> Option<u32> {
        self.present[ENTRIES].then(|| self.cpus.first().map_or(0, |row| row[ENTRIES]))
    }
}

pub use super::text_scan::ParseError;

/// Parses `/proc/net/stat/nf_conntrack`.
pub fn parse(bytes: &[u8]) -> Result<ConntrackStat, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(offset) = bytes.iter().position(|&b| !is_text(b)) {
        return Err(ParseError::NotText {
            file: "conntrack stat",
            offset,
        });
    }
    let mut lines = bytes.split(|&b| b == b'\n');
    let header = lines.next().unwrap_or_default();
    // Header position -> column index, or None for a name the agent does not know.
    let slots: Vec<Option<usize>> = tokens(header)
        .map(|name| COLUMNS.iter().position(|c| c.as_bytes() == name))
        .collect();
    if slots.is_empty() {
        return Err(ParseError::EmptyHeader);
    }
    let mut stat = ConntrackStat::default();
    for slot in slots.iter().flatten() {
        stat.present[*slot] = true;
    }
    let mut blank_at = None;
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let mut row = [0u32; COLUMN_COUNT];
        let mut found = 0;
        for (column, token) in tokens(line).enumerate() {
            let value = parse_hex_u32(token).map_err(|reason| ParseError::InvalidValue {
                line: line_no,
                column: column + 1,
                value: echo(token),
                reason,
            })?;
            if let Some(Some(slot)) = slots.get(column) {
                row[*slot] = value;
            }
            found += 1;
        }
        if found == 0 {
            // The file ends with a newline; a blank line anywhere else is malformed.
            blank_at.get_or_insert(line_no);
            continue;
        }
        if let Some(blank) = blank_at {
            return Err(ParseError::ColumnCount {
                line: blank,
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
        stat.cpus.push(row);
    }
    Ok(stat)
}

fn parse_hex_u32(token: &[u8]) -> Result<u32, &'static str> {
    let mut value: u64 = 0;
    for &b in token {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err("not hexadecimal"),
        };
        value = (value << 4) | u64::from(digit);
        if value > u64::from(u32::MAX) {
            return Err("wider than 32 bits");
        }
    }
    Ok(value as u32)
}

/// Why a one-number sysctl file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    #[error("file is empty")]
    Empty,
    #[error("invalid value {0:?}: not one unsigned decimal")]
    Invalid(String),
}

/// Parses a one-number sysctl file (`nf_conntrack_count`, `nf_conntrack_max`):
/// one unsigned decimal, surrounded by white space.
pub fn parse_sysctl(bytes: &[u8]) -> Result<u64, SysctlError> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Err(SysctlError::Empty);
    }
    super::tcp_counters::parse_u64(text).map_err(|_| SysctlError::Invalid(echo(text)))
}

#[cfg(test)]
#[path = "conntrack_stat_tests.rs"]
mod tests;

//! What the /proc parsers share: which bytes a text file of the kernel's may
//! hold, its whitespace-separated tokens, and how much of a bad token an
//! error message echoes, and their errors.

use std::fmt;

/// Why a /proc counter file could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Zero bytes: the file exists but says nothing.
    Empty,
    /// The first line holds no column names.
    EmptyHeader,
    /// NUL, control or non-ASCII bytes: not the `file` it should be.
    NotText { file: &'static str, offset: usize },
    /// `/proc/net/netstat`, `/proc/net/snmp`: a line that does not start
    /// with a `Group:` prefix.
    NoPrefix { line: usize },
    /// A header line with no value line after it.
    Unpaired { line: usize },
    /// A value line whose prefix is not its header's.
    PrefixMismatch {
        line: usize,
        header: String,
        values: String,
    },
    /// A row whose column count differs from the header's.
    ColumnCount {
        line: usize,
        expected: usize,
        found: usize,
    },
    /// A value that is not hexadecimal or does not fit in 32 bits.
    InvalidValue {
        line: usize,
        column: usize,
        value: String,
        reason: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "file is empty"),
            ParseError::EmptyHeader => write!(f, "invalid data: header line names no columns"),
            ParseError::NotText { file, offset } => {
                write!(f, "not a {file} file: binary data at byte {offset}")
            }
            ParseError::NoPrefix { line } => {
                write!(f, "line {line}: no `Group:` prefix")
            }
            ParseError::Unpaired { line } => {
                write!(f, "line {line}: header line without a value line")
            }
            ParseError::PrefixMismatch {
                line,
                header,
                values,
            } => write!(
                f,
                "line {line}: value line {values:?} does not follow its header {header:?}"
            ),
            ParseError::ColumnCount {
                line,
                expected,
                found,
            } => write!(
                f,
                "line {line}: invalid number of columns in data, expected {expected} found {found}"
            ),
            ParseError::InvalidValue {
                line,
                column,
                value,
                reason,
            } => write!(
                f,
                "line {line}, column {column}: invalid value {value:?}: {reason}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Longest token echoed back in an error message.
const MAX_ECHOED: usize = 24;

/// A token for an error message: at most [`MAX_ECHOED`] bytes, lossy UTF-8,
/// `...` when cut.
pub fn echo(token: &[u8]) -> String {
    let shown = &token[..token.len().min(MAX_ECHOED)];
    let mut s = String::from_utf8_lossy(shown).into_owned();
    if token.len() > MAX_ECHOED {
        s.push_str("...");
    }
    s
}

/// Printable ASCII, tab, newline or carriage return.
pub fn is_text(b: u8) -> bool {
    b.wrapping_sub(0x20) < 0x5F || b == b'\t' || b == b'\n' || b == b'\r'
}

/// The tokens of one line, split at spaces, tabs and carriage returns.
pub fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t' || b == b'\r')
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_long_tokens_and_tokens_skip_runs_of_blanks() {
        assert_eq!(echo(b"abc"), "abc");
        assert_eq!(echo(&[b'x'; 30]), format!("{}...", "x".repeat(24)));
        let t: Vec<&[u8]> = tokens(b" a\t\tb\r").collect();
        assert_eq!(t, [&b"a"[..], &b"b"[..]]);
        assert!(is_text(b'\t') && is_text(b'~') && !is_text(0) && !is_text(0x7f));
    }
}

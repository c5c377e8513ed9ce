//! Pure parser for the TCP stack's counters in `/proc/net/netstat` (`TcpExt:`)
//! and `/proc/net/snmp` (`Tcp:`): bytes in, the values of a fixed list of
//! fields out. No I/O here.
//!
//! Both files are pairs of lines per group: a header line naming the
//! columns, then a value line, each starting with the same prefix
//! (`TcpExt: SyncookiesSent ...` / `TcpExt: 0 ...`). Fields are found by
//! group and name, never by position: a kernel that adds, removes or moves
//! columns changes nothing, and a field this kernel lacks is reported as
//! absent, not as 0. Values of the fields read must be unsigned decimals
//! (the kernel prints `%lu`); other columns are only counted (`MaxConn` is
//! signed).

use super::text_scan::{echo, is_text, tokens};

/// Counter (monotonic) or gauge (a level that goes up and down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One field the agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackField {
    /// The group (`TcpExt`, `Tcp`), without the colon.
    pub group: &'static str,
    /// The column name in the header line.
    pub name: &'static str,
    pub kind: Kind,
    /// The family on `/metrics` (`synproxy_tcpext_...`, `synproxy_tcp_...`;
    /// counters are rendered with `_total`).
    pub metric: &'static str,
    pub help: &'static str,
}

impl StackField {
    /// The line protocol field name, as Telegraf's `inputs.nstat` writes it:
    /// group and column joined (`TcpExtSyncookiesSent`).
    pub fn field_name(&self) -> String {
        format!("{}{}", self.group, self.name)
    }
}

const fn counter(
    group: &'static str,
    name: &'static str,
    metric: &'static str,
    help: &'static str,
) -> StackField {
    StackField {
        group,
        name,
        kind: Kind::Counter,
        metric,
        help,
    }
}

/// The `TcpExt` fields of `/proc/net/netstat` the agent reports: those that
/// move when SYNs flood a listener (the kernel's own SYN cookies, the SYN
/// and accept queues, handshake retransmissions and timeouts).
pub const NETSTAT_FIELDS: [StackField; 14] = [
    counter("TcpExt", "SyncookiesSent", "synproxy_tcpext_syncookies_sent", "SYN cookies sent by the TCP stack (a listener's SYN queue overflowed with tcp_syncookies on)."),
    counter("TcpExt", "SyncookiesRecv", "synproxy_tcpext_syncookies_recv", "ACKs with a valid TCP stack SYN cookie."),
    counter("TcpExt", "SyncookiesFailed", "synproxy_tcpext_syncookies_failed", "ACKs with an invalid TCP stack SYN cookie."),
    counter("TcpExt", "EmbryonicRsts", "synproxy_tcpext_embryonic_rsts", "Resets received for connections in SYN_RECV."),
    counter("TcpExt", "ListenOverflows", "synproxy_tcpext_listen_overflows", "Handshakes completed while the listener's accept queue was full."),
    counter("TcpExt", "ListenDrops", "synproxy_tcpext_listen_drops", "SYNs and ACKs dropped at a listener (accept queue full and other reasons)."),
    counter("TcpExt", "TCPReqQFullDoCookies", "synproxy_tcpext_req_q_full_do_cookies", "SYN queue full: SYN cookie sent instead."),
    counter("TcpExt", "TCPReqQFullDrop", "synproxy_tcpext_req_q_full_drop", "SYN queue full: SYN dropped (no SYN cookies)."),
    counter("TcpExt", "TCPBacklogDrop", "synproxy_tcpext_backlog_drop", "Segments dropped because the socket backlog was full."),
    counter("TcpExt", "TCPTimeouts", "synproxy_tcpext_timeouts", "Retransmission timeouts (SYN/ACKs of half-open connections included)."),
    counter("TcpExt", "TCPSynRetrans", "synproxy_tcpext_syn_retrans", "SYN and SYN/ACK retransmissions."),
    counter("TcpExt", "TSEcrRejected", "synproxy_tcpext_ts_ecr_rejected", "ACKs whose timestamp echo reply was rejected during a handshake."),
    counter("TcpExt", "TCPChallengeACK", "synproxy_tcpext_challenge_ack", "Challenge ACKs sent."),
    counter("TcpExt", "TCPSYNChallenge", "synproxy_tcpext_syn_challenge", "Challenge ACKs sent in answer to a SYN."),
];

/// The `Tcp` fields of `/proc/net/snmp` the agent reports (RFC 4022's MIB
/// without its constants RtoAlgorithm, RtoMin, RtoMax and MaxConn).
pub const SNMP_FIELDS: [StackField; 11] = [
    counter(
        "Tcp",
        "ActiveOpens",
        "active_opens",
        "Connections opened by this host (SYN sent).",
    ),
    counter(
        "Tcp",
        "PassiveOpens",
        "passive_opens",
        "Connections accepted by listeners (SYN received).",
    ),
    counter(
        "Tcp",
        "AttemptFails",
        "attempt_fails",
        "Connection attempts that failed (SYN_SENT or SYN_RECV to CLOSED or LISTEN).",
    ),
    counter(
        "Tcp",
        "EstabResets",
        "estab_resets",
        "Established connections reset.",
    ),
    StackField {
        group: "Tcp",
        name: "CurrEstab",
        kind: Kind::Gauge,
        metric: "synproxy_tcp_curr_estab",
        help: "Connections in ESTABLISHED or CLOSE_WAIT now.",
    },
    counter(
        "Tcp",
        "InSegs",
        "synproxy_tcp_in_segs",
        "Segments received.",
    ),
    counter(
        "Tcp",
        "OutSegs",
        "out_segs",
        "Segments sent (retransmissions excluded).",
    ),
    counter(
        "Tcp",
        "RetransSegs",
        "retrans_segs",
        "Segments retransmitted.",
    ),
    counter(
        "Tcp",
        "InErrs",
        "synproxy_tcp_in_errs",
        "Segments received in error.",
    ),
    counter(
        "Tcp",
        "OutRsts",
        "synproxy_tcp_out_rsts",
        "Segments sent with RST.",
    ),
    counter(
        "Tcp",
        "InCsumErrors",
        "in_csum_errors",
        "Segments received with a bad checksum.",
    ),
];

pub use super::text_scan::ParseError;

/// The values of `fields` in `bytes`, in the order of `fields`; `None` for a
/// field whose group or column the file does not have. The first group of a
/// name counts (a repeated group is ignored).
pub fn parse(bytes: &[u8], fields: &[StackField]) -> Result<Vec<Option<u64>>, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(offset) = bytes.iter().position(|&b| !is_text(b)) {
        return Err(ParseError::NotText {
            file: "TCP counter",
            offset,
        });
    }
    let mut values = vec![None; fields.len()];
    let mut seen_groups: Vec<&[u8]> = Vec::new();
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| tokens(l).next().is_some());
    while let Some((header_no, header)) = lines.next() {
        let mut names = tokens(header);
        let prefix = names.next().unwrap_or_default();
        let Some(group) = prefix.strip_suffix(b":").filter(|g| !g.is_empty()) else {
            return Err(ParseError::NoPrefix { line: header_no });
        };
        let Some((value_no, value_line)) = lines.next() else {
            return Err(ParseError::Unpaired { line: header_no });
        };
        let mut cells = tokens(value_line);
        let value_prefix = cells.next().unwrap_or_default();
        if value_prefix != prefix {
            return Err(ParseError::PrefixMismatch {
                line: value_no,
                header: echo(prefix),
                values: echo(value_prefix),
            });
        }
        let names: Vec<&[u8]> = names.collect();
        let cells: Vec<&[u8]> = cells.collect();
        if names.len() != cells.len() {
            return Err(ParseError::ColumnCount {
                line: value_no,
                expected: names.len(),
                found: cells.len(),
            });
        }
        if seen_groups.contains(&group) {
            continue;
        }
        seen_groups.push(group);
        for (slot, field) in values.iter_mut().zip(fields) {
            if field.group.as_bytes() != group {
                continue;
            }
            let Some(column) = names.iter().position(|n| *n == field.name.as_bytes()) else {
                continue;
            };
            let cell = cells[column];
            let value = parse_u64(cell).map_err(|reason| ParseError::InvalidValue {
                line: value_no,
                column: column + 2,
                value: echo(cell),
                reason,
            })?;
            *slot = Some(value);
        }
    }
    Ok(values)
}

/// An unsigned decimal of at most 64 bits.
pub fn parse_u64(token: &[u8]) -> Result<u64, &'static str> {
    if token.is_empty() {
        return Err("empty");
    }
    let mut value: u64 = 0;
    for &b in token {
        if !b.is_ascii_digit() {
            return Err("not an unsigned decimal");
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("wider than 64 bits")?;
    }
    Ok(value)
}

#[cfg(test)]
#[path = "tcp_counters_tests.rs"]
mod tests;

//! A minimal HTTP client on loopback (one request per connection), a free
//! port finder and percent-encoding: shared by the tests crate and xtask's
//! soak, which compiles this file into itself (so std and anyhow only).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Answers are cut here: nothing a test or the soak reads is larger.
const MAX_ANSWER: u64 = 64 << 20;

/// A server's answer: status code, header block and (de-chunked) body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `method path` over HTTP/1.1 with `Connection: close` and `body`
/// (form-encoded when not empty); `timeout` bounds the connect and each
/// read and write.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, path, &raw, timeout)
}

/// Sends `request` (a whole HTTP request for `path`) to `addr` and reads the
/// answer until the server closes the connection.
pub fn exchange(addr: &str, path: &str, request: &[u8], timeout: Duration) -> Result<Answer> {
    let sock = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut all| all.next())
        .with_context(|| format!("cannot connect to {addr}: not an address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        let text = String::from_utf8_lossy(&raw);
        bail!("http://{addr}{path}: no HTTP response: {text:?}");
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("http://{addr}{path}: bad status line in {head:?}"))?;
    let body = &raw[split + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The body of a chunked answer (what is well-formed of it).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let data = &rest[end + 2..];
        let Some(size) = size.filter(|&s| s > 0 && s <= data.len()) else {
            break;
        };
        out.extend_from_slice(&data[..size]);
        rest = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
    }
    out
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query or form value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_and_stops_at_the_last() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        // A chunk longer than what arrived, or a bad size: what came before.
        assert_eq!(dechunk(b"3\r\nabc\r\n9\r\nde"), b"abc");
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
    }

    #[test]
    fn encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(
            encode("SELECT * FROM \"x\""),
            "SELECT%20%2A%20FROM%20%22x%22"
        );
    }
}

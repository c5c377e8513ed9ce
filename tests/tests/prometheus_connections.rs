//! The `/metrics` endpoint under idle and non-reading connections: 200 idle
//! keep-alive connections and 20 clients that request `/metrics` and never
//! read its response; a fresh scrape still answers within 1 s, the agent
//! keeps at most its connection limit open, and its memory stays bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use synproxy_tests::harness::Needs;
use synproxy_tests::metrics_agent::MetricsAgent;
use synproxy_tests::require;

/// Open connections the agent keeps (the documented number, docs/outputs.md).
const CONNECTION_LIMIT: usize = 64;
/// Growth of the agent's resident memory allowed over the whole test.
const RSS_GROWTH_KIB: u64 = 16 * 1024;

/// One keep-alive request on `stream`, its response read in full; its body.
fn keep_alive_scrape(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "closed before the response ended");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head}"));
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_string();
            }
        }
    }
}

/// A fresh connection's scrape: how long it took to the last byte.
fn fresh_scrape(addr: &str) -> Duration {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = keep_alive_scrape(&mut stream);
    assert!(body.contains("synproxy_agent_rounds_total"), "{body}");
    start.elapsed()
}

#[test]
fn idle_and_stalled_connections_do_not_keep_a_scrape_out() {
    require!(Needs {
        what: "the endpoint connection test",
        root: true,
        synproxy: true,
        ..Needs::default()
    }
    .check());
    let agent = MetricsAgent::serving(&["--no-ebpf", "--interval", "200ms"]);
    let addr = agent.addr.clone();
    // Warm up: rendered pages, runtime and allocator at their working size.
    for _ in 0..5 {
        fresh_scrape(&addr);
    }
    let rss_before = agent.rss_kib();

    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{e}"));
        keep_alive_scrape(&mut stream);
        idle.push(stream);
    }
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .unwrap_or_else(|e| panic!("socket: {e}"));
        // A small receive window: the response stays mostly in the agent.
        let _ = socket.set_recv_buffer_size(4096);
        let target: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        socket
            .connect(&target.into())
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        stalled.push(stream);
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(fresh_scrape(&addr));
    }
    let sockets = agent.sockets();
    let rss_after = agent.rss_kib();
    eprintln!(
        "slowest fresh scrape {slowest:?}; agent sockets {sockets}; VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a fresh scrape took {slowest:?} with 200 idle and 20 stalled connections"
    );
    // The connections plus the listener and a few of the agent's own
    // (netlink, the eBPF-less sampler's) sockets.
    assert!(
        sockets <= CONNECTION_LIMIT + 8,
        "the agent holds {sockets} sockets (limit {CONNECTION_LIMIT} connections)"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_KIB,
        "VmRSS grew from {rss_before} to {rss_after} KiB (bound {RSS_GROWTH_KIB} KiB)"
    );
    // The idle connections the agent closed read EOF; the most recent ones
    // are still served.
    let mut last = idle.pop().unwrap_or_else(|| panic!("no idle connection"));
    keep_alive_scrape(&mut last);
    drop(stalled);
    drop(idle);
    assert!(agent.log().lines().all(|l| !l.contains("panicked")));
}

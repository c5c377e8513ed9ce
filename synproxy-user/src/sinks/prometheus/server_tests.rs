//! The connection limits against a real socket, with short limits.

use super::page::Page;
use super::server::{serve, Limits};
use super::Published;
use crate::sinks::gate::Gate;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";

/// Starts a server with `limits`; its address.
async fn server(limits: Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(Page::new(Arc::new(Published::default()))));
    // The sender stays alive with the server task.
    tokio::spawn(async move {
        serve(listener, rx, Gate::open(), limits, None).await;
        drop(tx);
    });
    addr
}

/// Reads one response (headers and a Content-Length body); its head.
async fn response(stream: &mut TcpStream) -> String {
    try_response(stream)
        .await
        .expect("closed before a response")
}

/// [`response`], or `None` when the connection is closed first.
async fn try_response(stream: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap();
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed inside a response");
                data.extend_from_slice(&buf[..n]);
            }
            return Some(head);
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Waits (up to 5 s) for the server to close `stream`; how long it took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server did not close the connection within 5 s"),
        }
    }
}

fn short() -> Limits {
    Limits {
        connections: 4,
        idle: Duration::from_millis(300),
        max_age: Duration::from_secs(60),
        requests: 100,
        grace: Duration::from_millis(300),
        header_read: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let addr = server(short()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    assert!(response(&mut c).await.starts_with("HTTP/1.1 200"));
    let waited = closed(&mut c).await;
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
}

#[tokio::test]
async fn the_last_request_of_a_connection_says_close() {
    let addr = server(Limits {
        requests: 3,
        idle: Duration::from_secs(30),
        ..short()
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    for n in 1..=3 {
        c.write_all(REQUEST).await.unwrap();
        let head = response(&mut c).await.to_ascii_lowercase();
        assert_eq!(head.contains("connection: close"), n == 3, "{n}: {head}");
    }
    closed(&mut c).await;
}

#[tokio::test]
async fn an_old_connection_is_closed_between_requests() {
    let addr = server(Limits {
        max_age: Duration::from_millis(500),
        idle: Duration::from_secs(30),
        ..short()
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    // A busy client: a request every 20 ms, never idle.
    let mut served = 0;
    loop {
        if c.write_all(REQUEST).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), try_response(&mut c)).await {
            Ok(Some(_)) => served += 1,
            Ok(None) => break,
            Err(_) => panic!("no response within 5 s"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 5, "{served}");
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn a_new_connection_evicts_the_least_recently_active() {
    let addr = server(Limits {
        idle: Duration::from_secs(30),
        ..short()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(REQUEST).await.unwrap();
        response(&mut c).await;
        idle.push(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh.write_all(REQUEST).await.unwrap();
    let start = Instant::now();
    assert!(response(&mut fresh).await.starts_with("HTTP/1.1 200"));
    assert!(start.elapsed() < Duration::from_secs(1));
    // The first one (oldest activity) made room.
    closed(&mut idle[0]).await;
    // The others are still served.
    idle[3].write_all(REQUEST).await.unwrap();
    assert!(response(&mut idle[3]).await.starts_with("HTTP/1.1 200"));
}

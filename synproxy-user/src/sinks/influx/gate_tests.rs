//! The writer sends nothing before the capability drop (its gate opens).

use super::writer::{Endpoint, Shared, Writer};
use crate::sinks::gate;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn writer_to(addr: std::net::SocketAddr, gate: gate::Gate) -> (Writer, Arc<Shared>) {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(super::tls_config(false).expect("tls config"))
        .https_or_http()
        .enable_http1()
        .wrap_connector(HttpConnector::new());
    let endpoint = Endpoint {
        client: Client::builder(TokioExecutor::new()).build(connector),
        write_uri: format!("http://{addr}/write?db=x&precision=ns")
            .parse()
            .expect("uri"),
        authorization: None,
        target: addr.to_string(),
    };
    let shared = Arc::new(Shared::new(100));
    shared.lock().buffer.push(b"m v=1i 1\n".to_vec());
    (Writer::new(endpoint, Arc::clone(&shared), gate), shared)
}

#[test]
fn nothing_is_sent_before_the_gate_opens() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    server.set_nonblocking(true).expect("nonblocking");
    let addr = server.local_addr().expect("addr");
    let (opener, gate) = gate::gate();
    let (writer, shared) = writer_to(addr, gate);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(writer.run());
    });
    shared.wake.notify_one();
    // Lines are queued; with the gate closed nothing connects.
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet_until {
        assert!(
            server.accept().is_err(),
            "the writer connected before the gate opened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    opener.open();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        if let Ok((conn, _)) = server.accept() {
            break conn;
        }
        assert!(
            Instant::now() < deadline,
            "no request after the gate opened"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).expect("request");
    assert_eq!(&head, b"POST ");
}

#[test]
fn a_gate_that_never_opens_ends_the_writer() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (opener, gate) = gate::gate();
    let (writer, _shared) = writer_to(server.local_addr().expect("addr"), gate);
    drop(opener);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Returns at once, without sending (the buffer holds a line); a writer
    // that sent would retry until its shutdown, which never comes here.
    let ended = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), writer.run()).await });
    assert!(ended.is_ok(), "the writer went on without its gate");
}

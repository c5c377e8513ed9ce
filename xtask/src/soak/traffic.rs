//! SYNPROXY traffic in one stable pair of namespaces: a client and a server
//! joined by a veth pair, the server's port protected by iptables SYNPROXY,
//! and a few real TCP connections a second through it.

use super::synproxy_xt::synproxy_xt_rules;
use super::{run_tool, Stop};
use anyhow::{anyhow, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const PORT: u16 = 8080;
const CLIENT_ADDR: &str = "10.78.0.1";
const SERVER_ADDR: &str = "10.78.0.2";
/// Between two connections (about three a second).
const PAUSE: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(3);
const MESSAGE: &[u8; 5] = b"soak\n";

#[derive(Debug, Default)]
pub struct Connections {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// The pair, deleted (with its rules and veth) on drop.
pub struct Pair {
    client: String,
    server: String,
}

impl Pair {
    /// `PREFIXcli` and `PREFIXsrv` with SYNPROXY rules on
    /// the server's side.
    pub fn create(prefix: &str) -> Result<Self> {
        let pair = Self {
            client: format!("{prefix}cli"),
            server: format!("{prefix}srv"),
        };
        run_tool("ip", &["netns", "add", &pair.client])?;
        run_tool("ip", &["netns", "add", &pair.server])?;
        let id = std::process::id() % 100_000;
        let (cli_if, srv_if) = (format!("skc{id}"), format!("sks{id}"));
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        // A distinct ifindex: with ifindex == iflink the kernel may bring the
        // link up to 1 s late (linkwatch).
        run_tool(
            "ip",
            &[
                "-n", c, "link", "add", &cli_if, "index", "4242", "type", "veth", "peer", "name",
                &srv_if, "netns", s,
            ],
        )?;
        for (ns, ifname, addr) in [(c, &cli_if, CLIENT_ADDR), (s, &srv_if, SERVER_ADDR)] {
            run_tool(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    ifname,
                ],
            )?;
            run_tool("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run_tool("ip", &["-n", ns, "link", "set", ifname, "up"])?;
        }
        for rule in synproxy_xt_rules(&srv_if, PORT) {
            let mut full = vec!["netns", "exec", s, "iptables", "-w"];
            full.extend(rule.iter().map(String::as_str));
            run_tool("ip", &full)?;
        }
        // A reused client port must meet SYNPROXY, not an old TIME_WAIT
        // conntrack entry (which would hand its ACK to the server).
        for setting in [
            "net.netfilter.nf_conntrack_tcp_loose=0",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ] {
            run_tool("ip", &["netns", "exec", s, "sysctl", "-q", "-w", setting])?;
        }
        Ok(pair)
    }

    /// The server (accepts and answers) and the client (connects every
    /// [`PAUSE`]) until `stop`.
    pub fn start(&self, stop: &Stop, counts: &Arc<Connections>) -> Result<Vec<JoinHandle<()>>> {
        let server_ns = self.server.clone();
        let server_stop = stop.clone();
        // Bound before the client starts, so its first connection finds it.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let listener = enter(&server_ns).and_then(|()| {
                let listener = TcpListener::bind((SERVER_ADDR, PORT))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !server_stop.is_set() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = echo(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("the soak's SYNPROXY server did not start"))??;
        let client_ns = self.client.clone();
        let client_stop = stop.clone();
        let counts = Arc::clone(counts);
        let client = std::thread::spawn(move || {
            if let Err(e) = enter(&client_ns) {
                eprintln!("soak: traffic client: {e:#}");
                return;
            }
            let server: SocketAddr = match format!("{SERVER_ADDR}:{PORT}").parse() {
                Ok(a) => a,
                Err(_) => return,
            };
            while !client_stop.is_set() {
                match connect_once(&server) {
                    Ok(()) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    // One cut short by the end of the soak is no failure.
                    Err(_) if client_stop.is_set() => {}
                    Err(e) => {
                        // The first few say why; the count says how often.
                        if counts.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("soak: SYNPROXY connection failed: {e:#}");
                        }
                    }
                }
                client_stop.sleep(PAUSE);
            }
        });
        Ok(vec![server, client])
    }
}

/// One connection through SYNPROXY: the client speaks first (through
/// SYNPROXY a server that speaks first was measured to take 1 s per
/// connection) and the echo must come back.
fn connect_once(server: &SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(server, TIMEOUT).context("connect")?;
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream
        .write_all(MESSAGE)
        .with_context(|| format!("send from port {port}"))?;
    let mut answer = [0u8; MESSAGE.len()];
    stream
        .read_exact(&mut answer)
        .with_context(|| format!("echo to port {port}"))?;
    anyhow::ensure!(answer == *MESSAGE, "unexpected answer {answer:?}");
    Ok(())
}

/// The server's side: the client's message back.
fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut message = [0u8; MESSAGE.len()];
    stream.read_exact(&mut message)?;
    stream.write_all(&message)?;
    // The client closes first, so its side keeps TIME_WAIT and does not
    // reuse the port while the server's conntrack entry for it lives.
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    Ok(())
}

/// Moves the calling thread (only) into namespace `name`.
fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns() only reads the fd, which `file` keeps open for the
    // call; CLONE_NEWNET moves the calling thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            if let Err(e) = run_tool("ip", &["netns", "del", ns]) {
                eprintln!("soak: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

//! Traffic: a real TCP server and real clients, and crafted packets through raw
//! sockets. Every socket is created on a thread inside the right netns and keeps
//! that netns for its lifetime.

use crate::netns::Netns;
use crate::packet::{self, TcpSegment, V6Checksum};
use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// Keep accepted connections open until the server stops.
    Hold,
    /// Abort each accepted connection with SO_LINGER {1,0} (sends RST), which
    /// leaves the conntrack entry in CLOSE for 10 s (conn_reopened recipe).
    Reset,
    /// A server that stopped accepting: a backlog of 1, never `accept()`ed,
    /// so its accept queue is full after two connections and the kernel
    /// drops further SYNs (TcpExt ListenOverflows, ListenDrops).
    Stalled,
}

/// A TCP server on 0.0.0.0:port and [::]:port inside a netns.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    /// A [`ServerMode::Stalled`] server accepts (and holds) once this is set.
    resumed: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

fn listener(domain: Domain, addr: SocketAddr, backlog: i32) -> Result<Socket> {
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("socket for listener {addr}"))?;
    s.set_reuse_address(true)?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
        .with_context(|| format!("bind listener {addr}"))?;
    s.listen(backlog)
        .with_context(|| format!("listen on {addr}"))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl TcpServer {
    pub fn start(netns: &Netns, port: u16, mode: ServerMode) -> Result<Self> {
        let backlog = if mode == ServerMode::Stalled { 1 } else { 128 };
        let listeners = netns.run(|| {
            Ok(vec![
                listener(
                    Domain::IPV4,
                    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                    backlog,
                )?,
                listener(
                    Domain::IPV6,
                    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
                    backlog,
                )?,
            ])
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let resumed = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2, resumed2) = (stop.clone(), accepted.clone(), resumed.clone());
        let handle = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if mode == ServerMode::Stalled && !resumed2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let mut idle = true;
                for l in &listeners {
                    if let Ok((conn, _)) = l.accept() {
                        idle = false;
                        if mode == ServerMode::Reset {
                            // Errors only mean a normal close (FIN) instead of RST;
                            // the recipe then fails visibly on its counter.
                            let _ = conn.set_linger(Some(Duration::ZERO));
                            drop(conn);
                        } else {
                            held.push(conn);
                        }
                        accepted2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // A stopped server aborts what it holds (RST): closed with a FIN,
            // a connection would linger as an orphaned socket retransmitting
            // its FIN after the check deleted the namespaces, and keep the
            // namespace, its rules and their module references alive for a
            // minute or more (5.10 does), into the next check.
            for conn in held {
                let _ = conn.set_linger(Some(Duration::ZERO));
            }
        });
        Ok(TcpServer {
            stop,
            resumed,
            accepted,
            handle: Some(handle),
        })
    }

    /// A stalled server starts accepting again (its queue drains).
    pub fn resume(&self) {
        self.resumed.store(true, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` connections were accepted in total.
    pub fn wait_accepted(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n {
            if Instant::now() > deadline {
                bail!(
                    "server accepted {} connections, expected {n} within {timeout:?}",
                    self.accepted()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A real `connect()` from `netns` (full handshake through SYNPROXY).
pub fn connect(netns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    netns
        .run(|| {
            let domain = Domain::for_address(dst);
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.connect_timeout(&dst.into(), timeout)?;
            Ok(TcpStream::from(s))
        })
        .with_context(|| format!("connect to {dst} from netns {}", netns.name()))
}

/// Wait until `dst` answers at the TCP level at all (a refused connection is an
/// answer): links are up and neighbours resolve. Use an unprotected port.
pub fn wait_reachable(netns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = netns.run(|| {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            Ok(s.connect_timeout(&dst.into(), Duration::from_millis(300)))
        })?;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("{dst} not reachable within {timeout:?}"))
            }
            Err(e) => {
                if std::env::var_os("SPX_DEBUG").is_some() {
                    eprintln!("# debug: probe {dst}: {e}");
                }
                std::thread::sleep(Duration::from_millis(20))
            }
        }
    }
}

/// Sends crafted TCP packets (TTL / hop limit 77) from the client netns.
pub struct RawSender {
    sock: Socket,
    src: IpAddr,
    v6_checksum: V6Checksum,
    ip_id: u16,
}

impl RawSender {
    pub fn new(netns: &Netns, src: IpAddr, v6_checksum: V6Checksum) -> Result<Self> {
        let sock = netns
            .run(|| match src {
                // IPPROTO_RAW implies IP_HDRINCL: we write the IPv4 header.
                IpAddr::V4(_) => Ok(Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )?),
                // Header included for IPv6 too: the checksum trick for nft needs
                // to know every header byte (flow label, hop limit).
                IpAddr::V6(_) => Ok(Socket::new(
                    Domain::IPV6,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )?),
            })
            .context("raw socket for crafted packets (needs CAP_NET_RAW)")?;
        Ok(RawSender {
            sock,
            src,
            v6_checksum,
            ip_id: 1,
        })
    }

    pub fn send(&mut self, dst: IpAddr, seg: &TcpSegment) -> Result<()> {
        self.send_from(self.src, dst, seg)
    }

    /// Like [`RawSender::send`], with `src` as the packet's source address
    /// instead of the one given to [`RawSender::new`] (the family must match
    /// the socket's).
    pub fn send_from(&mut self, src: IpAddr, dst: IpAddr, seg: &TcpSegment) -> Result<()> {
        self.send_shaped(src, dst, seg, false)
    }

    /// Like [`RawSender::send_from`], with more between the IP and the TCP
    /// header when `padded`: IPv4 options, or an IPv6 destination options
    /// header (only with [`V6Checksum::Correct`]; the other mode's checksum
    /// covers the whole packet, so it sends the plain packet).
    pub fn send_shaped(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        seg: &TcpSegment,
        padded: bool,
    ) -> Result<()> {
        if src.is_ipv4() != self.src.is_ipv4() {
            bail!(
                "source {src} is not of the raw socket's family ({})",
                self.src
            );
        }
        let (bytes, addr) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.ip_id = self.ip_id.wrapping_add(1);
                let bytes = packet::build_v4(s, d, seg, self.ip_id);
                let bytes = if padded {
                    packet::with_ip_options(bytes)
                } else {
                    bytes
                };
                (bytes, SockAddr::from(SocketAddr::new(dst, 0)))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let bytes = packet::build_v6(s, d, seg, self.v6_checksum);
                let bytes = if padded && self.v6_checksum == V6Checksum::Correct {
                    packet::with_dst_options(bytes)
                } else {
                    bytes
                };
                (bytes, SockAddr::from(SocketAddr::new(dst, 0)))
            }
            _ => bail!("address family mismatch: {src} -> {dst}"),
        };
        let n = self
            .sock
            .send_to(&bytes, &addr)
            .with_context(|| format!("sendto {dst} (crafted {:#04x})", seg.flags))?;
        if n != bytes.len() {
            bail!("short raw send to {dst}: {n} of {} bytes", bytes.len());
        }
        Ok(())
    }
}

/// Receives copies of incoming TCP segments in the client netns (raw IPPROTO_TCP),
/// to learn the sequence numbers of SYN/ACKs sent by SYNPROXY.
pub struct RawReceiver {
    sock: Socket,
    v6: bool,
}

impl RawReceiver {
    /// Open before sending the packet whose answer is awaited.
    pub fn new(netns: &Netns, v6: bool) -> Result<Self> {
        let sock = netns
            .run(|| {
                let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
                let s = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(s)
            })
            .context("raw TCP receive socket")?;
        Ok(RawReceiver { sock, v6 })
    }

    /// Next segment from port `sport` to port `dport` with all `flags` set.
    pub fn wait_for(
        &self,
        sport: u16,
        dport: u16,
        flags: u8,
        timeout: Duration,
    ) -> Result<TcpSegment> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let n = match (&self.sock).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("recv on raw TCP socket"),
            };
            // IPv4 raw sockets deliver the IP header, IPv6 ones only the payload.
            let seg = if self.v6 {
                packet::parse_tcp(&buf[..n])
            } else {
                packet::parse_v4(&buf[..n]).map(|(_, t)| t)
            };
            if let Some(t) = seg {
                if t.sport == sport && t.dport == dport && t.flags & flags == flags {
                    return Ok(t);
                }
            }
        }
        bail!("no TCP segment {sport}->{dport} with flags {flags:#04x} within {timeout:?}")
    }
}

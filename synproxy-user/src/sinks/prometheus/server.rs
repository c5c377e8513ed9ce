//! The HTTP server behind `/metrics`: accept loop and connection limits.
//!
//! At most [`Limits::connections`] connections are open; one more evicts the
//! connection that has moved no byte for the longest time, so idle keep-alive
//! connections or clients that never read cannot keep a scrape out. A
//! connection that moves no byte for [`Limits::idle`] is closed (an idle
//! keep-alive connection, or a response its client does not read); one older
//! than [`Limits::max_age`] is closed after its current response (or after
//! [`Limits::grace`] at most); the response to its [`Limits::requests`]th
//! request carries `Connection: close`.

use super::auth::Users;
use super::page::Page;
use super::reload::Watched;
use super::routes::{respond, unauthorized};
use crate::sinks::gate::Gate;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info, warn};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, Semaphore};

/// The connection limits (documented in docs/prometheus.md).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub connections: usize,
    /// No byte read or written for this long: closed.
    pub idle: Duration,
    /// Open this long: closed after the response in progress.
    pub max_age: Duration,
    /// Requests served on one connection.
    pub requests: u32,
    /// How long a response in progress may take once the connection is closing.
    pub grace: Duration,
    /// A client that has not sent its request headers by then is disconnected.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 64,
            idle: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            requests: 100,
            grace: Duration::from_secs(10),
            header_read: Duration::from_secs(30),
        }
    }
}

/// One open connection, as the table sees it.
#[derive(Debug)]
struct Conn {
    /// When it was accepted (its age counts from there).
    opened: Instant,
    /// Milliseconds since the server's start at the last byte moved.
    last: AtomicU64,
    evict: Notify,
}

/// The open connections.
#[derive(Debug)]
struct Table {
    start: Instant,
    open: Mutex<(u64, HashMap<u64, Arc<Conn>>)>,
}

impl Table {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection, evicting the least recently active one
    /// when `max` are open.
    fn admit(&self, max: usize) -> (u64, Arc<Conn>) {
        let conn = Arc::new(Conn {
            opened: Instant::now(),
            last: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while open.1.len() >= max.max(1) {
            let Some(oldest) = open
                .1
                .iter()
                .min_by_key(|(_, c)| c.last.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(victim) = open.1.remove(&oldest) {
                victim.evict.notify_one();
            }
        }
        open.0 += 1;
        let id = open.0;
        open.1.insert(id, Arc::clone(&conn));
        (id, conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.1.remove(&id);
    }

    /// When the connection last moved a byte.
    fn last(&self, conn: &Conn) -> Instant {
        self.start + Duration::from_millis(conn.last.load(Ordering::Relaxed))
    }
}

/// A stream that notes in its [`Conn`] when a byte moves.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl<S> Tracked<S> {
    fn moved(&self) {
        self.conn.last.store(self.table.now_ms(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` and serves the latest page of `pages`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    pages: watch::Receiver<Arc<Page>>,
    gate: Gate,
    limits: Limits,
    web: Option<Arc<Watched>>,
) {
    // bcrypt comparisons at once (each takes tens of milliseconds of CPU).
    let bcrypt_slots = Arc::new(Semaphore::new(2));
    let table = Arc::new(Table {
        start: Instant::now(),
        open: Mutex::new((0, HashMap::new())),
    });
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if std::mem::take(&mut failing) {
                    info!("--prometheus-listen: accepting connections again");
                }
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, retry.
                if !std::mem::replace(&mut failing, true) {
                    warn!("--prometheus-listen: cannot accept connections: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, conn) = table.admit(limits.connections);
        let pages = pages.clone();
        let gate = gate.clone();
        let table = Arc::clone(&table);
        let web = web.clone();
        let bcrypt_slots = Arc::clone(&bcrypt_slots);
        tokio::spawn(async move {
            let io = Tracked {
                inner: stream,
                conn: Arc::clone(&conn),
                table: Arc::clone(&table),
            };
            let served = Served {
                pages,
                limits,
                web,
                bcrypt_slots,
            };
            connection(io, &conn, &table, served, gate).await;
            table.remove(id);
        });
    }
}

/// What every connection serves, and with which limits.
struct Served {
    pages: watch::Receiver<Arc<Page>>,
    limits: Limits,
    web: Option<Arc<Watched>>,
    bcrypt_slots: Arc<Semaphore>,
}

/// Serves one connection (TLS first when configured); returns when it is
/// closed.
async fn connection<S>(io: Tracked<S>, conn: &Conn, table: &Table, served: Served, mut gate: Gate)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Accepted, but not read before the capability drop.
    tokio::select! {
        opened = gate.opened() => if !opened { return },
        _ = conn.evict.notified() => return,
    }
    // The configuration as of this connection (re-read if it changed).
    let tls = served
        .web
        .as_ref()
        .and_then(|web| web.current().tls.clone());
    let Some(tls) = tls else {
        return http(io, conn, table, served).await;
    };
    let idle = served.limits.idle;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::select! {
        handshake = tokio::time::timeout(idle, acceptor.accept(io)) => match handshake {
            Ok(Ok(stream)) => http(stream, conn, table, served).await,
            Ok(Err(e)) => debug!("metrics connection: TLS handshake: {e}"),
            Err(_) => debug!("metrics connection: TLS handshake not done in {idle:?}"),
        },
        _ = conn.evict.notified() => {}
    }
}

/// Whether `request` may be answered (basic authentication, when configured).
async fn authorized(
    request: &Request<Incoming>,
    web: Option<&Watched>,
    slots: &Arc<Semaphore>,
) -> bool {
    let Some(web) = web else {
        return true;
    };
    let users: Arc<Users> = Arc::clone(&web.current().users);
    users.allows(request.headers(), slots).await
}

/// Serves HTTP/1.1 on `io` within the limits; returns when it is closed.
async fn http<I>(io: I, conn: &Conn, table: &Table, served: Served)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        pages,
        limits,
        web,
        bcrypt_slots,
    } = served;
    let count = Arc::new(AtomicU32::new(0));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let page = Arc::clone(&pages.borrow());
        let n = count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let web = web.clone();
        let slots = Arc::clone(&bcrypt_slots);
        async move {
            let mut response = if authorized(&request, web.as_deref(), &slots).await {
                respond(&request, &page)
            } else {
                unauthorized()
            };
            if n >= limits.requests {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    let started = conn.opened;
    let mut closing: Option<Instant> = None;
    loop {
        let idle_at = table.last(conn) + limits.idle;
        let limit_at = closing.unwrap_or(started + limits.max_age);
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    debug!("metrics connection: {e}");
                }
                return;
            }
            _ = conn.evict.notified() => {
                debug!("metrics connection: closed for a new one ({} open)", limits.connections);
                return;
            }
            _ = tokio::time::sleep_until(idle_at.min(limit_at).into()) => {
                let now = Instant::now();
                if now >= table.last(conn) + limits.idle {
                    debug!("metrics connection: no byte moved for {:?}, closed", limits.idle);
                    return;
                }
                match closing {
                    Some(deadline) if now >= deadline => return,
                    None if now >= started + limits.max_age => {
                        http.as_mut().graceful_shutdown();
                        closing = Some(now + limits.grace);
                    }
                    _ => {}
                }
            }
        }
    }
}

//! The `--prometheus-listen` socket.

use super::reload::Watched;
use super::top_series::TopSeries;
use crate::cli::parse_listen_addr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The `--prometheus-listen` socket, bound at start-up so that a bad address
/// or a port in use is a start-up error.
#[derive(Debug)]
pub struct Listener {
    socket: std::net::TcpListener,
    addr: SocketAddr,
    web: Option<Arc<Watched>>,
    top_series: TopSeries,
}

impl Listener {
    /// Binds `text` (`IP:PORT`); the error is one line naming the flag.
    pub fn bind(text: &str) -> Result<Self, String> {
        let addr =
            parse_listen_addr(text).map_err(|e| format!("--prometheus-listen {text:?}: {e}"))?;
        let socket = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--prometheus-listen {text}: {}", describe_bind_error(&e)))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("--prometheus-listen {text}: {e}"))?;
        let addr = socket.local_addr().unwrap_or(addr);
        Ok(Self {
            socket,
            addr,
            web: None,
            top_series: TopSeries::Off,
        })
    }

    /// Serves with TLS and authentication from `--web-config-file PATH`,
    /// read now: an invalid file is a start-up error (one line naming the key).
    pub fn with_web_config(mut self, path: &Path) -> Result<Self, String> {
        self.web = Some(Arc::new(Watched::load(path)?));
        Ok(self)
    }

    /// Shows per-source series as `mode` says (`--prometheus-top-sources`).
    pub fn with_top_series(mut self, mode: TopSeries) -> Self {
        self.top_series = mode;
        self
    }

    pub(super) fn top_series(&self) -> TopSeries {
        self.top_series
    }

    pub(super) fn web_config(&self) -> Option<Arc<Watched>> {
        self.web.clone()
    }

    /// The socket on the current tokio runtime.
    pub(super) fn into_tokio(self) -> Result<tokio::net::TcpListener, String> {
        let addr = self.addr;
        tokio::net::TcpListener::from_std(self.socket)
            .map_err(|e| format!("--prometheus-listen {addr}: {e}"))
    }

    /// The address actually bound (port 0 picks a free port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn describe_bind_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (another process listens on that port)".into()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "address not available (no interface of this host has it)".into()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        _ => format!("cannot listen: {e}"),
    }
}

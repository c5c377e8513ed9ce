//! The set-up most VM checks start from: a server and a client namespace
//! joined by veth, SYNPROXY rules (xt, IPv4) in the server's, the client's
//! RST filter (its kernel must not answer the crafted packets' SYN-ACKs), a
//! TCP server on the protected port, and the link seen up.

use crate::netns::Topology;
use crate::rules::{self, Family, Flavour, RuleSet, ServerRules, PROTECTED_PORT};
use crate::scenario::Config;
use crate::tools::Tools;
use crate::traffic::{self, ServerMode, TcpServer};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// An unprotected port of the server, probed to see the link up.
pub const PROBE_PORT: u16 = 8081;
/// Generous: the guest runs under TCG on a possibly busy host.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Fields drop in order: the server, the rules, then the namespaces.
pub struct ProtectedServer {
    server: TcpServer,
    _cli_rules: RuleSet,
    _srv_rules: ServerRules,
    pub topo: Topology,
}

impl ProtectedServer {
    /// The server on the protected port, stalled, accepts again.
    pub fn resume_server(&self) {
        self.server.resume();
    }

    /// xt rules for IPv4; the server `mode` on [`PROTECTED_PORT`].
    pub fn xt_ipv4(cfg: &Config, mode: ServerMode) -> Result<Self> {
        Self::xt_ipv4_in(&cfg.tools, cfg.server_netns.as_deref(), mode)
    }

    /// The same with `tools`, in the server namespace `existing_srv` if given.
    pub fn xt_ipv4_in(tools: &Tools, existing_srv: Option<&str>, mode: ServerMode) -> Result<Self> {
        let topo = Topology::create(tools, existing_srv).context("netns setup")?;
        let srv_rules =
            ServerRules::install(tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
                .context("SYNPROXY rules")?;
        let cli_rules =
            rules::install_client_rst_filter(tools, &topo.cli, Flavour::Xt, Family::Ipv4)
                .context("RST filter")?;
        let server = TcpServer::start(&topo.srv, PROTECTED_PORT, mode)?;
        traffic::wait_reachable(
            &topo.cli,
            SocketAddr::new(topo.srv4.into(), PROBE_PORT),
            LINK_TIMEOUT,
        )?;
        Ok(Self {
            server,
            _cli_rules: cli_rules,
            _srv_rules: srv_rules,
            topo,
        })
    }
}

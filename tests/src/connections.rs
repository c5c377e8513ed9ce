//! Real connections through SYNPROXY, held open while a test looks at the
//! counters they moved: a namespace pair, the rules, a server that holds what
//! it accepts, and the clients' sockets.

use crate::netns::Topology;
use crate::rules::{Family, Flavour, ServerRules, PROTECTED_PORT};
use crate::tools::Tools;
use crate::traffic::{self, ServerMode, TcpServer};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Generous: the machine may be twice as slow and busy.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections through SYNPROXY, held open while this lives.
pub struct Connections {
    // Connections and server go before the rules and the namespaces.
    _conns: Vec<TcpStream>,
    _server: TcpServer,
    _rules: ServerRules,
    pub topo: Topology,
}

impl Connections {
    /// `connections` accepted connections (IPv4, `flavour` rules) into a
    /// fresh server namespace, or into the existing namespace `srv`.
    pub fn open(tools: &Tools, srv: Option<&str>, flavour: Flavour, connections: u64) -> Self {
        let topo = Topology::create(tools, srv).unwrap_or_else(|e| panic!("{e:#}"));
        let rules = ServerRules::install(tools, &topo.srv, flavour, Family::Ipv4, &topo.srv_if)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let dst = SocketAddr::new(topo.srv4.into(), PROTECTED_PORT);
        let conns = (0..connections)
            .map(|_| traffic::connect(&topo.cli, dst, TIMEOUT).unwrap_or_else(|e| panic!("{e:#}")))
            .collect();
        server
            .wait_accepted(connections, TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            _conns: conns,
            _server: server,
            _rules: rules,
            topo,
        }
    }
}

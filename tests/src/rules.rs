//! SYNPROXY rules (xt via iptables/ip6tables, or native nft) in the server netns,
//! plus the helper rules of the traffic recipes.

use crate::netns::Netns;
use crate::synproxy_xt::synproxy_xt_rules;
use crate::tools::{self, Tools};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const PROTECTED_PORT: u16 = 8080;
/// TTL / hop limit of crafted packets; the client drops every other RST it sends.
pub const CRAFT_TTL: u8 = 77;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Xt,
    Nft,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Xt => "xt",
            Flavour::Nft => "nft",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "xt" => Ok(Flavour::Xt),
            "nft" => Ok(Flavour::Nft),
            other => bail!("unknown rules flavour {other:?} (xt|nft)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ipv4" => Ok(Family::Ipv4),
            "ipv6" => Ok(Family::Ipv6),
            other => bail!("unknown family {other:?} (ipv4|ipv6)"),
        }
    }
}

/// Rules installed in one netns. Removed again on drop when the netns is not ours
/// (an owned netns takes its rules with it).
pub struct RuleSet {
    netns: String,
    undo: Vec<(PathBuf, Vec<String>)>,
    cleanup: bool,
}

impl RuleSet {
    pub fn new(netns: &Netns) -> Self {
        RuleSet {
            netns: netns.name().to_string(),
            undo: Vec::new(),
            cleanup: !netns.owned(),
        }
    }

    fn exec(&self, prog: &Path, args: &[String], stdin: Option<&str>) -> Result<()> {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::netns::run_in(&self.netns, || tools::run_with_stdin(prog, &argv, stdin))
            .with_context(|| format!("in netns {}", self.netns))
    }

    /// `iptables -w <args>`; `undo_args` (without -w) is run on cleanup.
    fn xt(&mut self, prog: &Path, args: &[&str], undo_args: Vec<String>) -> Result<()> {
        let mut full = vec!["-w".to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        self.exec(prog, &full, None)?;
        let mut undo = vec!["-w".to_string()];
        undo.extend(undo_args);
        self.undo.push((prog.to_path_buf(), undo));
        Ok(())
    }

    /// Add an xt rule; cleanup deletes the same rule (`-A`/`-I` become `-D`).
    pub(crate) fn xt_rule(&mut self, prog: &Path, args: &[&str]) -> Result<()> {
        let undo = args
            .iter()
            .map(|a| match *a {
                "-A" | "-I" => "-D".to_string(),
                other => other.to_string(),
            })
            .collect();
        self.xt(prog, args, undo)
    }

    /// Load an nft script creating table `inet TABLE`; cleanup deletes the table.
    fn nft_table(&mut self, nft: &Path, table: &str, script: &str) -> Result<()> {
        self.exec(nft, &["-f".into(), "-".into()], Some(script))
            .with_context(|| format!("nft script:\n{script}"))?;
        self.undo.push((
            nft.to_path_buf(),
            vec!["delete".into(), "table".into(), "inet".into(), table.into()],
        ));
        Ok(())
    }

    fn nft_cmd(&self, nft: &Path, args: &[&str]) -> Result<()> {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.exec(nft, &argv, None)
    }
}

impl Drop for RuleSet {
    fn drop(&mut self) {
        if !self.cleanup {
            return;
        }
        for (prog, args) in self.undo.iter().rev() {
            if let Err(e) = self.exec(prog, args, None) {
                eprintln!("# warning: rule cleanup in {}: {e:#}", self.netns);
            }
        }
    }
}

fn xt_prog(tools: &Tools, family: Family) -> &PathBuf {
    match family {
        Family::Ipv4 => &tools.iptables,
        Family::Ipv6 => &tools.ip6tables,
    }
}

fn table_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        crate::netns::next_seq()
    )
}

/// The SYNPROXY rules of the doc for one family on interface `ifname`, then
/// `nf_conntrack_tcp_loose=0` (conntrack is surely loaded once rules use it).
pub struct ServerRules {
    set: RuleSet,
    flavour: Flavour,
    family: Family,
    nft_table: Option<String>,
    ifname: String,
    port: u16,
}

impl ServerRules {
    pub fn install(
        tools: &Tools,
        srv: &Netns,
        flavour: Flavour,
        family: Family,
        ifname: &str,
    ) -> Result<Self> {
        Self::install_on_port(tools, srv, flavour, family, ifname, PROTECTED_PORT)
    }

    /// [`ServerRules::install`] protecting `port` instead of [`PROTECTED_PORT`]:
    /// several flavours and families can then share one server netns.
    pub fn install_on_port(
        tools: &Tools,
        srv: &Netns,
        flavour: Flavour,
        family: Family,
        ifname: &str,
        port: u16,
    ) -> Result<Self> {
        let port_num = port;
        let port = port.to_string();
        let mut set = RuleSet::new(srv);
        let mut nft_table = None;
        match flavour {
            Flavour::Xt => {
                let prog = xt_prog(tools, family);
                for rule in synproxy_xt_rules(ifname, port_num) {
                    let args: Vec<&str> = rule.iter().map(String::as_str).collect();
                    set.xt_rule(prog, &args)?;
                }
            }
            Flavour::Nft => {
                let table = table_name("spx_srv");
                let nfproto = match family {
                    Family::Ipv4 => "ipv4",
                    Family::Ipv6 => "ipv6",
                };
                // nft 1.0.6 needs each chain's closing brace on its own line.
                let script = format!(
                    "table inet {table} {{\n\
                     \tchain pre {{\n\
                     \t\ttype filter hook prerouting priority raw; policy accept;\n\
                     \t\tmeta nfproto {nfproto} iifname \"{ifname}\" tcp dport {port} tcp flags syn / fin,syn,rst,ack notrack\n\
                     \t}}\n\
                     \tchain inp {{\n\
                     \t\ttype filter hook input priority filter; policy accept;\n\
                     \t\tmeta nfproto {nfproto} iifname \"{ifname}\" tcp dport {port} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm\n\
                     \t\tmeta nfproto {nfproto} iifname \"{ifname}\" tcp dport {port} ct state invalid drop\n\
                     \t}}\n\
                     }}\n"
                );
                set.nft_table(&tools.nft, &table, &script)?;
                nft_table = Some(table);
            }
        }
        srv.write_sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        Ok(ServerRules {
            set,
            flavour,
            family,
            nft_table,
            ifname: ifname.to_string(),
            port: port_num,
        })
    }

    /// cookie_retrans recipe: drop synproxy's own SYN to the local server so the
    /// conntrack entry stays in SYN_SENT.
    pub fn drop_local_server_syn(&mut self, tools: &Tools) -> Result<()> {
        let port = self.port.to_string();
        match (self.flavour, &self.nft_table) {
            (Flavour::Nft, Some(table)) => {
                let rule =
                    format!("iifname \"lo\" tcp dport {port} tcp flags syn / fin,syn,rst,ack drop");
                let set = &self.set;
                set.nft_cmd(&tools.nft, &["insert", "rule", "inet", table, "inp", &rule])
            }
            _ => {
                let prog = xt_prog(tools, self.family).clone();
                self.set.xt_rule(
                    &prog,
                    &[
                        "-I", "INPUT", "-i", "lo", "-p", "tcp", "--dport", &port, "--syn", "-j",
                        "DROP",
                    ],
                )
            }
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Client side: drop the kernel's own RSTs (answers to SYN/ACKs of crafted flows)
/// but not crafted packets, which carry TTL / hop limit 77.
pub fn install_client_rst_filter(
    tools: &Tools,
    cli: &Netns,
    flavour: Flavour,
    family: Family,
) -> Result<RuleSet> {
    let ttl = CRAFT_TTL.to_string();
    let mut set = RuleSet::new(cli);
    match flavour {
        Flavour::Xt => {
            let (prog, module, opt) = match family {
                Family::Ipv4 => (&tools.iptables, "ttl", "--ttl-eq"),
                Family::Ipv6 => (&tools.ip6tables, "hl", "--hl-eq"),
            };
            set.xt_rule(
                prog,
                &[
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "--tcp-flags",
                    "RST",
                    "RST",
                    "-m",
                    module,
                    "!",
                    opt,
                    &ttl,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Flavour::Nft => {
            // Same rule in nft, so an nft-only guest needs no iptables extensions.
            let table = table_name("spx_cli");
            let matcher = match family {
                Family::Ipv4 => format!("meta nfproto ipv4 ip ttl != {ttl}"),
                Family::Ipv6 => format!("meta nfproto ipv6 ip6 hoplimit != {ttl}"),
            };
            let script = format!(
                "table inet {table} {{\n\
                 \tchain out {{\n\
                 \t\ttype filter hook output priority filter; policy accept;\n\
                 \t\t{matcher} tcp flags & rst == rst drop\n\
                 \t}}\n\
                 }}\n"
            );
            set.nft_table(&tools.nft, &table, &script)?;
        }
    }
    Ok(set)
}

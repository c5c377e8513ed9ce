//! `synproxy-scenario`'s command line: one subcommand per check group, the
//! options every group shares (the agent, rules, families, tool paths) before
//! or after it, and `--list`, which prints the VM suite's check names.

use crate::check_names::CHECKS;
use crate::rules::{Family, Flavour};
use crate::scenario::{self, AgentMode, Config, EbpfMode};
use crate::tools::Tools;
use crate::{ebpf_cost, sustained, user_netns_check};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use synproxy_common::Counter;

/// Drives every SYNPROXY counter with real traffic in fresh network
/// namespaces and checks the agent against /proc: one `RESULT ...` line per
/// check, then `SUMMARY passed=N failed=M`; exit 1 if anything failed.
#[derive(Debug, Parser)]
#[command(name = "synproxy-scenario")]
pub struct Cli {
    /// Print the VM suite's check names, one a line, and exit.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

/// Options of every check group, accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Common {
    /// The agent binary to test.
    #[arg(long, global = true, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Rules flavour: xt, nft or all.
    #[arg(long, global = true, default_value = "all")]
    pub rules: String,
    /// Address family: ipv4, ipv6 or all.
    #[arg(long, global = true, default_value = "all")]
    pub family: String,
    /// Counter the matrix drives, or all.
    #[arg(long, global = true, default_value = "all")]
    pub counter: String,
    /// Events the matrix drives per counter.
    #[arg(long, global = true, default_value_t = 5)]
    pub count: u32,
    #[arg(long, global = true, value_name = "PATH")]
    pub ip: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PATH")]
    pub iptables: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PATH")]
    pub ip6tables: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PATH")]
    pub nft: Option<PathBuf>,
    /// An existing network namespace as the server side (kept afterwards).
    #[arg(long, global = true, value_name = "NAME")]
    pub server_netns: Option<String>,
    /// Where the matrix runs the agent: inside, netns or both.
    #[arg(long, global = true, default_value = "both")]
    pub agent_mode: String,
    /// One more argument for every agent started (repeatable).
    #[arg(
        long = "extra-agent-arg",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub extra_agent_args: Vec<String>,
    /// eBPF beside /proc: auto (where the kernel has kprobes), require or off.
    #[arg(long, global = true, default_value = "auto")]
    pub ebpf: String,
    /// The agents' probe type.
    #[arg(long, global = true, default_value = "kprobe", value_parser = ["kprobe", "fentry"])]
    pub probes: String,
}

/// The check groups.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Mode {
    /// Every counter per rules flavour and family, each in fresh namespaces.
    Matrix,
    /// eBPF under a flood of SYNs and bad ACKs, then the shutdown checks.
    Flood {
        #[arg(long = "syn", default_value_t = 20_000)]
        syns: u32,
        #[arg(long = "ack", default_value_t = 5_000)]
        acks: u32,
    },
    /// A paced flood across 20+ namespaces, eBPF and /proc equal to what was driven.
    Sustained {
        #[arg(long = "syn", default_value_t = sustained::Params::default().syns)]
        syns: u32,
        #[arg(long = "ack", default_value_t = sustained::Params::default().acks)]
        acks: u32,
        /// The sender takes at least this long.
        #[arg(long, default_value_t = sustained::Params::default().secs)]
        secs: f64,
    },
    /// SIGTERM during start-up, kill -9 and restart, two agents at once.
    Lifecycle {
        /// Milliseconds after start to send SIGTERM at (default: from a measured start-up).
        #[arg(long, value_name = "MS,MS,...", value_delimiter = ',')]
        delays: Option<Vec<u64>>,
    },
    /// The agent with eBPF as uid 65534 with the documented capabilities.
    NonRoot,
    /// Per-address counts against ground truth, then the spoofed flood.
    TopSources,
    /// Per-port counts against ground truth, then more ports than the map holds.
    TopPorts,
    /// The attack detector against benign swings, floods, two ports and a restart.
    AttackDetection,
    /// The probes' run time and the throughput they cost.
    EbpfCost {
        #[arg(long = "syn", default_value_t = ebpf_cost::Params::default().syns)]
        syns: u32,
        #[arg(long = "throughput-syn", default_value_t = ebpf_cost::Params::default().throughput_syns)]
        throughput_syns: u32,
        #[arg(long, default_value_t = ebpf_cost::Params::default().runs)]
        runs: u32,
        /// Fail when the throughput target is missed (only where the guest's clock counts instructions).
        #[arg(long)]
        enforce_throughput: bool,
    },
    /// The agent started before nf_synproxy_core is loaded, then the modules
    /// reloaded under it (module-late, then module-reload; VM guest only).
    ModuleLate,
    /// The clean-state precondition fails while a namespace is held and holds after.
    CleanState,
    /// --probes fentry holds the module, SIGUSR1 releases it, a reload brings new BTF
    /// (VM guest only).
    FentryModule,
    /// `synproxy-agent top` in tmux, read as a person reads it.
    TopView,
    /// Namespaces an unprivileged user made, before a named server namespace.
    UserNetns {
        #[arg(long, default_value_t = user_netns_check::DEFAULT_COUNT)]
        namespaces: usize,
    },
}

/// What to run, parsed and checked.
#[derive(Debug)]
pub struct Scenario {
    pub cfg: Config,
    pub rules: Vec<Flavour>,
    pub families: Vec<Family>,
    pub counters: Vec<Counter>,
    pub mode: Mode,
}

/// The names `--list` prints, one a line.
pub fn list() -> String {
    CHECKS.iter().map(|name| format!("{name}\n")).collect()
}

fn all_or<T>(value: &str, all: &[T], parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>>
where
    T: Clone,
{
    if value == "all" {
        Ok(all.to_vec())
    } else {
        Ok(vec![parse(value)?])
    }
}

impl Cli {
    /// The scenario to run (not for `--list`, which needs nothing else).
    pub fn scenario(self) -> Result<Scenario> {
        let names: Vec<String> = Mode::names();
        let mode = self
            .mode
            .with_context(|| format!("a check group is required: one of {}", names.join(", ")))?;
        let c = self.common;
        let agent = c.agent.context("--agent PATH is required")?;
        let defaults = Tools::default();
        let tools = Tools {
            ip: c.ip.unwrap_or(defaults.ip),
            iptables: c.iptables.unwrap_or(defaults.iptables),
            ip6tables: c.ip6tables.unwrap_or(defaults.ip6tables),
            nft: c.nft.unwrap_or(defaults.nft),
        };
        let fentry = c.probes == "fentry";
        let mut extra = c.extra_agent_args;
        if fentry {
            extra.extend(["--probes".to_string(), "fentry".to_string()]);
        }
        Ok(Scenario {
            cfg: Config {
                tools,
                agent,
                extra_agent_args: extra,
                server_netns: c.server_netns,
                count: c.count,
                agent_mode: AgentMode::parse(&c.agent_mode)?,
                ebpf: EbpfMode::parse(&c.ebpf)?,
                fentry,
            },
            rules: all_or(&c.rules, &[Flavour::Xt, Flavour::Nft], Flavour::parse)?,
            families: all_or(&c.family, &[Family::Ipv4, Family::Ipv6], Family::parse)?,
            counters: all_or(&c.counter, &Counter::ALL, scenario::parse_counter)?,
            mode,
        })
    }
}

impl Mode {
    /// The subcommands' names.
    pub fn names() -> Vec<String> {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect()
    }
}

/// `Cli::try_parse_from`, then [`Cli::scenario`]; errors as one text.
pub fn parse<I, T>(args: I) -> Result<Scenario>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => cli.scenario(),
        Err(e) => bail!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Scenario {
        parse(std::iter::once("synproxy-scenario").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
    }

    fn refused(args: &[&str]) -> String {
        match parse(std::iter::once("synproxy-scenario").chain(args.iter().copied())) {
            Ok(s) => panic!("{args:?} parsed as {s:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    const TOOLS: [&str; 8] = [
        "--ip",
        "/sbin/ip",
        "--iptables",
        "/sbin/iptables-legacy",
        "--ip6tables",
        "/sbin/ip6tables-legacy",
        "--nft",
        "/sbin/nft",
    ];

    #[test]
    fn the_guest_calls_parse_with_options_before_and_after_the_group() {
        let mut args = vec![
            "--agent", "/bin/a", "--ebpf", "require", "--probes", "fentry", "flood",
        ];
        args.extend(TOOLS);
        let s = parsed(&args);
        assert_eq!(
            s.mode,
            Mode::Flood {
                syns: 20_000,
                acks: 5_000
            }
        );
        assert_eq!(s.cfg.agent, PathBuf::from("/bin/a"));
        assert_eq!(s.cfg.ebpf, EbpfMode::Require);
        assert!(s.cfg.fentry);
        assert_eq!(s.cfg.extra_agent_args, ["--probes", "fentry"]);
        assert_eq!(s.cfg.tools.iptables, PathBuf::from("/sbin/iptables-legacy"));
        assert_eq!(s.cfg.tools.nft, PathBuf::from("/sbin/nft"));
        assert_eq!(s.rules, [Flavour::Xt, Flavour::Nft]);
        assert_eq!(s.counters, Counter::ALL);

        let s = parsed(&[
            "matrix", "--agent", "/bin/a", "--rules", "xt", "--family", "ipv6",
        ]);
        assert_eq!(s.mode, Mode::Matrix);
        assert_eq!(
            (s.rules, s.families),
            (vec![Flavour::Xt], vec![Family::Ipv6])
        );
        assert_eq!(s.cfg.tools.ip, PathBuf::from("ip"));
        assert!(!s.cfg.fentry && s.cfg.extra_agent_args.is_empty());
    }

    #[test]
    fn each_group_takes_its_own_options() {
        let s = parsed(&[
            "--agent",
            "a",
            "sustained",
            "--syn",
            "20000",
            "--ack",
            "6000",
        ]);
        assert_eq!(
            s.mode,
            Mode::Sustained {
                syns: 20_000,
                acks: 6_000,
                secs: 6.0
            }
        );
        let s = parsed(&["--agent", "a", "lifecycle", "--delays", "0,5,40"]);
        assert_eq!(
            s.mode,
            Mode::Lifecycle {
                delays: Some(vec![0, 5, 40])
            }
        );
        let s = parsed(&["--agent", "a", "lifecycle"]);
        assert_eq!(s.mode, Mode::Lifecycle { delays: None });
        let s = parsed(&["--agent", "a", "ebpf-cost", "--enforce-throughput"]);
        assert_eq!(
            s.mode,
            Mode::EbpfCost {
                syns: 10_000,
                throughput_syns: 30_000,
                runs: 7,
                enforce_throughput: true
            }
        );
        let s = parsed(&["--agent", "a", "user-netns", "--namespaces", "3000"]);
        assert_eq!(s.mode, Mode::UserNetns { namespaces: 3000 });
        let s = parsed(&[
            "--agent",
            "a",
            "--extra-agent-arg",
            "--netns-max",
            "--extra-agent-arg",
            "4",
            "non-root",
        ]);
        assert_eq!(s.cfg.extra_agent_args, ["--netns-max", "4"]);
        for group in [
            "top-sources",
            "top-ports",
            "attack-detection",
            "top-view",
            "non-root",
            "module-late",
            "clean-state",
            "fentry-module",
        ] {
            parsed(&["--agent", "a", group]);
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(refused(&["--agent", "a"])
            .starts_with("a check group is required: one of matrix, flood, "));
        assert_eq!(refused(&["flood"]), "--agent PATH is required");
        assert!(refused(&["--agent", "a", "flod"]).contains("unrecognized subcommand 'flod'"));
        assert!(
            refused(&["--agent", "a", "flood", "--syn", "many"]).contains("invalid value 'many'")
        );
        assert!(refused(&["--agent", "a", "--rules", "ebt", "matrix"])
            .contains("unknown rules flavour \"ebt\""));
        assert!(refused(&["--agent", "a", "--probes", "uprobe", "matrix"])
            .contains("invalid value 'uprobe'"));
        assert!(refused(&["--agent", "a", "sustained", "--delays", "1"])
            .contains("unexpected argument '--delays'"));
    }

    #[test]
    fn list_prints_every_check_once() {
        let cli = Cli::try_parse_from(["synproxy-scenario", "--list"]).unwrap();
        assert!(cli.list && cli.mode.is_none());
        let text = list();
        let listed: Vec<&str> = text.lines().collect();
        assert_eq!(listed, CHECKS);
    }
}

//! Command line: the flag names are a contract with users and Telegraf configs.

use crate::cli_bounds;
use crate::logging::LogFormat;
use crate::ranking::{TopConfig, DEFAULT_TOP, DEFAULT_TOP_PORTS};
use crate::sources::proc::netns_policy::{NetnsPolicy, DEFAULT_MAX_NAMESPACES};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use synproxy_common::{PORTS_DEFAULT_ENTRIES, SOURCES_DEFAULT_ENTRIES};

#[derive(Debug, Parser)]
#[command(
    name = "synproxy-agent",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    about = "Measures netfilter SYNPROXY and writes InfluxDB line protocol (a drop-in for Telegraf's inputs.synproxy) or serves Prometheus metrics",
    after_help = "Examples:\n  synproxy-agent --once\n  synproxy-agent --interval 10s --netns all\n  synproxy-agent --signal stdin --log-format telegraf   # Telegraf [[inputs.execd]]\n  synproxy-agent --netns all --prometheus-listen 127.0.0.1:10816   # Prometheus /metrics\n  synproxy-agent --netns all --influx-url http://127.0.0.1:8086 --influx-db telegraf   # InfluxDB 1.x\n  INFLUX_TOKEN=... synproxy-agent --influx-url https://influx:8086 --influx-org ops --influx-bucket net   # InfluxDB 2.x\n  synproxy-agent top --netns all   # the live view in the terminal (keys: see synproxy-agent top --help)"
)]
pub struct Cli {
    /// `top`: the live terminal view. Without a command: the agent.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print one sample and exit (non-zero exit if any namespace could not be read).
    #[arg(long, conflicts_with = "signal")]
    pub once: bool,

    /// Sampling interval in long-running mode: 500ms, 10s, 1m, 1h30m...; 10ms to 24h.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = cli_bounds::parse_interval, env = "SYNPROXY_AGENT_INTERVAL")]
    pub interval: Duration,

    /// `stdin`: one sample per line read from stdin, exit on EOF (Telegraf execd signal = "STDIN").
    #[arg(
        long,
        value_enum,
        default_value = "none",
        env = "SYNPROXY_AGENT_SIGNAL"
    )]
    pub signal: SignalMode,

    /// The proc filesystem to read: DIR/net/stat/synproxy (like Telegraf's HOST_PROC).
    #[arg(long, value_name = "DIR", default_value = "/proc", env = "HOST_PROC")]
    pub proc_root: PathBuf,

    /// Read this network namespace (from `ip netns`; repeatable, or comma-separated),
    /// or `all` for every namespace on the host. Lines are tagged netns=<name>.
    #[arg(
        long = "netns",
        value_name = "NAME|all",
        value_delimiter = ',',
        env = "SYNPROXY_AGENT_NETNS"
    )]
    pub netns: Vec<String>,

    /// Where `ip netns` keeps named namespaces.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/netns",
        env = "SYNPROXY_AGENT_NETNS_DIR"
    )]
    pub netns_dir: PathBuf,

    /// `--netns all`: track at most N namespaces, 1 to 16384 (named ones first;
    /// a warning says how many were left out).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NAMESPACES, value_parser = parse_netns_max, env = "SYNPROXY_AGENT_NETNS_MAX")]
    pub netns_max: usize,

    /// `--netns all`: also track namespaces owned by user namespaces nested in
    /// the agent's (which any user can create with `unshare -rn`).
    #[arg(long, env = "SYNPROXY_AGENT_NETNS_INCLUDE_USER_OWNED")]
    pub netns_include_user_owned: bool,

    /// Read /proc only; do not load eBPF programs.
    #[arg(long, env = "SYNPROXY_AGENT_NO_EBPF")]
    pub no_ebpf: bool,

    /// Do not read the TCP stack's counters (/proc/net/netstat TcpExt and
    /// /proc/net/snmp Tcp: the nstat lines, synproxy_tcpext_* and
    /// synproxy_tcp_* on /metrics).
    #[arg(long, env = "SYNPROXY_AGENT_NO_NSTAT")]
    pub no_nstat: bool,

    /// Do not read conntrack's statistics (/proc/net/stat/nf_conntrack,
    /// nf_conntrack_count and nf_conntrack_max: the conntrack lines,
    /// synproxy_conntrack_* on /metrics).
    #[arg(long, env = "SYNPROXY_AGENT_NO_CONNTRACK")]
    pub no_conntrack: bool,

    /// Do not judge each namespace's defense from SYNPROXY's, the TCP stack's
    /// and conntrack's counters (the synproxy_defense lines,
    /// synproxy_defense_* on /metrics, the log line on each change).
    #[arg(long, env = "SYNPROXY_AGENT_NO_VERDICT")]
    pub no_verdict: bool,

    /// How long a namespace's rates are learnt before its defense is judged
    /// (state "learning" meanwhile); 0s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = cli_bounds::parse_verdict_warmup, env = "SYNPROXY_AGENT_VERDICT_WARMUP")]
    pub verdict_warmup: Duration,

    #[command(flatten)]
    pub attacks: attack::AttackArgs,

    /// Which BPF programs count the events. kprobe: kprobes/kretprobes through
    /// tracefs (any kernel with kprobes). fentry: fentry/fexit programs,
    /// cheaper per event; on SYNPROXY built as modules (distribution kernels)
    /// they need the modules' BTF (CONFIG_DEBUG_INFO_BTF_MODULES, Linux 5.11+)
    /// and CAP_SYS_ADMIN to find it; where that is missing the agent logs one
    /// warning naming the reason and uses kprobes. While the agent runs with
    /// fentry, nf_synproxy_core and nf_conntrack cannot be unloaded (rmmod: "Module
    /// nf_synproxy_core is in use"): the kernel holds a module while a program
    /// on one of its functions is attached (on 6.4+ while it is loaded). Send
    /// SIGUSR1 to release it: the agent unloads its programs and loads them
    /// again against the module's new BTF once the module is reloaded (or after
    /// 60 s if it was not). The type in use is the probe_type field of the
    /// synproxy_ebpf_probes line and synproxy_ebpf_probe_type on /metrics.
    #[arg(
        long,
        value_enum,
        value_name = "kprobe|fentry",
        default_value = "kprobe",
        env = "SYNPROXY_AGENT_PROBES"
    )]
    pub probes: crate::sources::ebpf::ProbeType,

    /// Width of the buckets behind the eBPF peak rates (`*_peak_rate` fields), 10ms to 1h.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = cli_bounds::parse_rate_resolution, env = "SYNPROXY_AGENT_RATE_RESOLUTION")]
    pub rate_resolution: Duration,

    /// Top sources per namespace, address family and counter each interval
    /// (the synproxy_top_sources lines, synproxy_top_source_events on /metrics),
    /// 0 to 1000; 0 turns the feature off.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP, value_parser = parse_top, env = "SYNPROXY_AGENT_TOP")]
    pub top: usize,

    /// Sum IPv4 sources into prefixes of this length before ranking them
    /// (24: 203.0.113.0/24), 0 to 32; 32 ranks each address.
    #[arg(long, value_name = "BITS", default_value_t = 32, value_parser = parse_prefix_v4, env = "SYNPROXY_AGENT_TOP_PREFIX_V4")]
    pub top_prefix_v4: u8,

    /// Sum IPv6 sources into prefixes of this length before ranking them
    /// (64: 2001:db8:1:2::/64), 0 to 128; 128 ranks each address.
    #[arg(long, value_name = "BITS", default_value_t = 128, value_parser = parse_prefix_v6, env = "SYNPROXY_AGENT_TOP_PREFIX_V6")]
    pub top_prefix_v6: u8,

    /// Entries of the agent's table of sources (namespace, counter, family
    /// and address, filled from the probes' event log), 1024 to 1048576: up
    /// to about 221 bytes each while a round reads a full table (at most 221
    /// MiB at 1048576). When a flood has more sources, those not counted
    /// again lately are evicted (`source_evictions`).
    #[arg(long, value_name = "N", default_value_t = SOURCES_DEFAULT_ENTRIES, value_parser = parse_top_map_entries, env = "SYNPROXY_AGENT_TOP_MAP_ENTRIES")]
    pub top_map_entries: u32,

    /// Destination ports reported per namespace and counter each interval
    /// with eBPF (the synproxy_top_ports lines, synproxy_top_port_events on
    /// /metrics), IPv4 and IPv6 summed, 0 to 100; 0 turns per-port counting off.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP_PORTS, value_parser = parse_top_ports, env = "SYNPROXY_AGENT_TOP_PORTS")]
    pub top_ports: usize,

    /// Entries of the agent's table of ports (namespace, counter, family and
    /// destination port), 256 to 1048576; when more ports are hit, those not
    /// counted again lately are evicted (`port_evictions`).
    #[arg(long, value_name = "N", default_value_t = PORTS_DEFAULT_ENTRIES, value_parser = parse_top_ports_map_entries, env = "SYNPROXY_AGENT_TOP_PORTS_MAP_ENTRIES")]
    pub top_ports_map_entries: u32,

    /// Do not add the `host` tag.
    #[arg(long, env = "SYNPROXY_AGENT_NO_HOST_TAG")]
    pub no_host_tag: bool,

    /// Value of the `host` tag (default: the system's hostname).
    #[arg(long, value_name = "NAME", env = "SYNPROXY_AGENT_HOSTNAME")]
    pub hostname: Option<String>,

    /// Extra tag on every line (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// Write unsigned integers (`123u`) instead of signed (`123i`).
    #[arg(long, env = "SYNPROXY_AGENT_UINT")]
    pub uint: bool,

    /// Shape of the log lines on stderr; `telegraf` prefixes them with E!/W!/I!/D!,
    /// `journald` with syslog priorities (<3> error to <7> debug) and no timestamp.
    /// Default: journald when stderr is the systemd journal (JOURNAL_STREAM), else text.
    #[arg(long, value_enum, env = "SYNPROXY_AGENT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Serve Prometheus metrics on http://ADDR/metrics (for example 127.0.0.1:10816
    /// or [::]:10816). Line protocol on stdout then stops unless --stdout is given.
    /// Empty: no endpoint.
    #[arg(long, value_name = "ADDR", env = "SYNPROXY_AGENT_PROMETHEUS_LISTEN")]
    pub prometheus_listen: Option<String>,

    /// TLS and basic authentication of the metrics endpoint: a Prometheus
    /// exporter-toolkit web configuration file (tls_server_config,
    /// basic_auth_users with bcrypt hashes), as node_exporter's
    /// --web.config.file. Re-read when it changes. Needs --prometheus-listen.
    #[arg(long, value_name = "FILE", env = "SYNPROXY_AGENT_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Per-source series on /metrics (synproxy_top_source_events and _share):
    /// off: none; prefix: one per /24 (IPv4) or /64 (IPv6) of the --top
    /// sources, events summed; address: one per source. Each new source or
    /// prefix is a new Prometheus series, and a spoofed flood makes new ones
    /// every round. Line protocol and `top` always have every source.
    #[arg(
        long,
        value_enum,
        value_name = "off|prefix|address",
        default_value = "off",
        env = "SYNPROXY_AGENT_PROMETHEUS_TOP_SOURCES"
    )]
    pub prometheus_top_sources: crate::sinks::prometheus::TopSeries,

    /// Write the line protocol to InfluxDB at this base URL (http:// or https://,
    /// e.g. http://127.0.0.1:8086), with --influx-db (1.x API) or --influx-bucket
    /// and --influx-org (2.x API). Credentials: INFLUX_TOKEN, or INFLUX_USERNAME
    /// and INFLUX_PASSWORD (1.x), or --influx-token-file. Line protocol on stdout
    /// then stops unless --stdout is given.
    #[arg(long, value_name = "URL", env = "SYNPROXY_AGENT_INFLUX_URL")]
    pub influx_url: Option<String>,

    /// InfluxDB 1.x database (POST /write?db=DB).
    #[arg(long, value_name = "DB", env = "SYNPROXY_AGENT_INFLUX_DB")]
    pub influx_db: Option<String>,

    /// InfluxDB 2.x bucket (POST /api/v2/write?bucket=B), with --influx-org.
    #[arg(long, value_name = "BUCKET", env = "SYNPROXY_AGENT_INFLUX_BUCKET")]
    pub influx_bucket: Option<String>,

    /// InfluxDB 2.x organization (name or ID), with --influx-bucket.
    #[arg(long, value_name = "ORG", env = "SYNPROXY_AGENT_INFLUX_ORG")]
    pub influx_org: Option<String>,

    /// Read the InfluxDB token from this file (instead of INFLUX_TOKEN); sent as
    /// `Authorization: Token ...`.
    #[arg(long, value_name = "PATH", env = "SYNPROXY_AGENT_INFLUX_TOKEN_FILE")]
    pub influx_token_file: Option<PathBuf>,

    /// Lines kept for InfluxDB while it cannot be written to; when full, the
    /// oldest are dropped (and counted). 1 to 1000000. The default holds over
    /// an hour at the default interval for up to 270 lines per round.
    #[arg(
        long,
        value_name = "LINES",
        default_value_t = DEFAULT_INFLUX_BUFFER_LINES,
        value_parser = cli_bounds::parse_influx_buffer_lines,
        env = "SYNPROXY_AGENT_INFLUX_BUFFER_LINES"
    )]
    pub influx_buffer_lines: u64,

    /// Print line protocol on stdout also when a network output is configured
    /// (without one, stdout is the output and this changes nothing).
    #[arg(long, env = "SYNPROXY_AGENT_STDOUT")]
    pub stdout: bool,

    /// Run CMD at each attack's start and end, with the event as one JSON
    /// document on its stdin and SYNPROXY_ATTACK_* variables (docs/hook.md).
    /// CMD is a program (absolute, or found in /usr/local/sbin:/usr/local/bin:
    /// /usr/sbin:/usr/bin:/sbin:/bin) and whitespace-separated arguments: no
    /// shell, no quoting. It runs with no capabilities, one at a time per
    /// namespace. Empty: no hook.
    #[arg(long, value_name = "CMD", env = "SYNPROXY_AGENT_ON_ATTACK")]
    pub on_attack: Option<String>,

    /// A hook running longer is killed with its process group (one log
    /// line); 100ms to 1h.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = cli_bounds::parse_hook_timeout, env = "SYNPROXY_AGENT_ON_ATTACK_TIMEOUT")]
    pub on_attack_timeout: Duration,

    /// Go on (with a warning) when the capability drop after start-up fails.
    /// Without it such a failure stops the agent (exit 1): it never runs with
    /// more capabilities than its features need.
    #[arg(long, env = "SYNPROXY_AGENT_ALLOW_FAILED_CAPABILITY_DROP")]
    pub allow_failed_capability_drop: bool,

    /// Least severe log level written.
    #[arg(
        long,
        value_enum,
        default_value = "info",
        env = "SYNPROXY_AGENT_LOG_LEVEL"
    )]
    pub log_level: LogLevel,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live full-screen view of the counters' rates, in the terminal.
    ///
    /// Per namespace the rate of each counter with its last 5 minutes, the eBPF IPv4/IPv6 split, peak rates
    /// and reconcile status, and the top sources. Keys: Tab/Shift-Tab or
    /// arrows pick the namespace, s sorts the namespaces, c picks the counter
    /// of the top-sources table, space or p pauses, q quits.
    Top(TopArgs),
}

/// `synproxy-agent top`. Reads no `SYNPROXY_AGENT_*` variable (an agent's
/// settings in the environment must not change the view), only `HOST_PROC`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  synproxy-agent top\n  synproxy-agent top --netns all\n  synproxy-agent top --netns edge --no-ebpf --interval 500ms"
)]
pub struct TopArgs {
    /// Refresh interval: 500ms, 1s, 2s...; 10ms to 1h.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = cli_bounds::parse_top_interval)]
    pub interval: Duration,

    /// The proc filesystem to read: DIR/net/stat/synproxy.
    #[arg(long, value_name = "DIR", default_value = "/proc", env = "HOST_PROC")]
    pub proc_root: PathBuf,

    /// Show this network namespace (from `ip netns`; repeatable, or
    /// comma-separated), or `all` for every namespace on the host.
    #[arg(long = "netns", value_name = "NAME|all", value_delimiter = ',')]
    pub netns: Vec<String>,

    /// Where `ip netns` keeps named namespaces.
    #[arg(long, value_name = "DIR", default_value = "/run/netns")]
    pub netns_dir: PathBuf,

    /// `--netns all`: show at most N namespaces, 1 to 16384 (see the agent's --netns-max).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NAMESPACES, value_parser = parse_netns_max)]
    pub netns_max: usize,

    /// `--netns all`: also namespaces owned by nested user namespaces.
    #[arg(long)]
    pub netns_include_user_owned: bool,

    /// Read /proc only; do not load eBPF programs.
    #[arg(long)]
    pub no_ebpf: bool,

    /// Which BPF programs count the events (see the agent's --probes).
    #[arg(
        long,
        value_enum,
        value_name = "kprobe|fentry",
        default_value = "kprobe"
    )]
    pub probes: crate::sources::ebpf::ProbeType,

    /// Width of the buckets behind the eBPF peak rates, 10ms to 1h.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = cli_bounds::parse_rate_resolution)]
    pub rate_resolution: Duration,

    /// Rows of the top sources table per address family, 0 to 1000; 0 turns
    /// per-source counting off (see the agent's --top).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP, value_parser = parse_top)]
    pub top: usize,

    /// Sum IPv4 sources into prefixes of this length, 0 to 32 (see the agent's --top-prefix-v4).
    #[arg(long, value_name = "BITS", default_value_t = 32, value_parser = parse_prefix_v4)]
    pub top_prefix_v4: u8,

    /// Sum IPv6 sources into prefixes of this length, 0 to 128 (see the agent's --top-prefix-v6).
    #[arg(long, value_name = "BITS", default_value_t = 128, value_parser = parse_prefix_v6)]
    pub top_prefix_v6: u8,

    /// Entries of the table of sources, 1024 to 1048576 (see the agent's --top-map-entries).
    #[arg(long, value_name = "N", default_value_t = SOURCES_DEFAULT_ENTRIES, value_parser = parse_top_map_entries)]
    pub top_map_entries: u32,

    /// Rows of the top ports table per namespace and counter, 0 to 100; 0
    /// turns per-port counting off (see the agent's --top-ports).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP_PORTS, value_parser = parse_top_ports)]
    pub top_ports: usize,

    /// Entries of the table of ports, 256 to 1048576 (see the agent's --top-ports-map-entries).
    #[arg(long, value_name = "N", default_value_t = PORTS_DEFAULT_ENTRIES, value_parser = parse_top_ports_map_entries)]
    pub top_ports_map_entries: u32,

    /// Go on when the capability drop after start-up fails (see the agent's flag).
    #[arg(long)]
    pub allow_failed_capability_drop: bool,

    /// How long a namespace's rates are learnt before its defense is judged
    /// (the Defense panel says "learning" meanwhile); 0s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = cli_bounds::parse_verdict_warmup)]
    pub verdict_warmup: Duration,
}

impl TopArgs {
    pub fn top_config(&self) -> TopConfig {
        let (v4, v6) = (self.top_prefix_v4, self.top_prefix_v6);
        TopConfig::new(self.top, v4, v6, self.top_map_entries)
            .with_ports(self.top_ports, self.top_ports_map_entries)
    }

    /// One-line errors naming the flag, as [`Cli::validate`].
    pub fn validate(&self) -> Result<NetnsSelection, String> {
        validate_proc_root(&self.proc_root)?;
        netns_selection(
            &self.netns,
            NetnsPolicy {
                max: self.netns_max,
                include_user_owned: self.netns_include_user_owned,
            },
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SignalMode {
    None,
    Stdin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

/// Which namespaces to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSelection {
    /// The agent's own namespace, untagged (Telegraf's behaviour).
    Own,
    Named(Vec<String>),
    /// Every namespace, within these limits.
    All(NetnsPolicy),
}

/// `--influx-buffer-lines` default: one hour at the default 10 s interval is
/// 360 rounds, so 100,000 lines hold an hour of rounds of up to 277 lines
/// (about 39 namespaces with eBPF and the stack sources: 7 lines each, or 55
/// without eBPF: 5 each).
pub const DEFAULT_INFLUX_BUFFER_LINES: u64 = 100_000;

pub mod attack;
mod validate;
mod values;
use validate::{netns_selection, validate_proc_root};
pub use values::*;

#[cfg(test)]
mod tests;

//! Command line: the flag names are a contract with users and Telegraf configs.

use crate::cli_bounds;
use crate::logging::LogFormat;
use crate::ranking::{TopConfig, DEFAULT_TOP, MAX_TOP, MAX_TOP_MAP_ENTRIES, MIN_TOP_MAP_ENTRIES};
use crate::sources::proc::netns_policy::{
    NetnsPolicy, DEFAULT_MAX_NAMESPACES, MAX_MAX_NAMESPACES, MIN_MAX_NAMESPACES,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use synproxy_common::SOURCES_DEFAULT_ENTRIES;

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

    /// Entries of the kernel's per-source map (an LRU hash of
    /// namespace, counter, family and address), 1024 to 1048576: about 112
    /// bytes of kernel memory each, and in the agent up to about 210 bytes
    /// each while a round reads a full map (at most 210 MiB at 1048576). When
    /// a flood has more sources, the least recently seen are evicted
    /// (`source_evictions`).
    #[arg(long, value_name = "N", default_value_t = SOURCES_DEFAULT_ENTRIES, value_parser = parse_top_map_entries, env = "SYNPROXY_AGENT_TOP_MAP_ENTRIES")]
    pub top_map_entries: u32,

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

    /// Entries of the kernel's per-source map, 1024 to 1048576 (see the agent's --top-map-entries).
    #[arg(long, value_name = "N", default_value_t = SOURCES_DEFAULT_ENTRIES, value_parser = parse_top_map_entries)]
    pub top_map_entries: u32,

    /// Go on when the capability drop after start-up fails (see the agent's flag).
    #[arg(long)]
    pub allow_failed_capability_drop: bool,
}

impl TopArgs {
    pub fn top_config(&self) -> TopConfig {
        TopConfig {
            n: self.top,
            prefix_v4: self.top_prefix_v4,
            prefix_v6: self.top_prefix_v6,
            map_entries: self.top_map_entries,
        }
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
/// (about 90 namespaces with eBPF: 3 lines each, or 270 without).
pub const DEFAULT_INFLUX_BUFFER_LINES: u64 = 100_000;

impl Cli {
    /// Checks that need more than one flag or the filesystem; one-line errors
    /// naming the flag.
    pub fn validate(&self) -> Result<NetnsSelection, String> {
        validate_proc_root(&self.proc_root)?;
        let selection = netns_selection(
            &self.netns,
            NetnsPolicy {
                max: self.netns_max,
                include_user_owned: self.netns_include_user_owned,
            },
        )?;
        if selection != NetnsSelection::Own && self.tags.iter().any(|(k, _)| k == "netns") {
            return Err("--tag netns=...: the netns tag is set by --netns".into());
        }
        if let Some(listen) = &self.prometheus_listen {
            if self.once {
                return Err(format!(
                    "--prometheus-listen {listen}: not with --once (there is nothing to scrape after one sample)"
                ));
            }
            parse_listen_addr(listen)
                .map_err(|e| format!("--prometheus-listen {listen:?}: {e}"))?;
        }
        if let (Some(file), None) = (&self.web_config_file, &self.prometheus_listen) {
            return Err(format!(
                "--web-config-file {}: needs --prometheus-listen",
                file.display()
            ));
        }
        self.validate_influx_flags()?;
        if let Some(host) = &self.hostname {
            if host.is_empty() || host.chars().any(char::is_control) {
                return Err(format!(
                    "--hostname {host:?}: must be non-empty, without control characters"
                ));
            }
        }
        Ok(selection)
    }
}

impl Cli {
    /// `--top`, `--top-prefix-v4` and `--top-prefix-v6`.
    pub fn top_config(&self) -> TopConfig {
        TopConfig {
            n: self.top,
            prefix_v4: self.top_prefix_v4,
            prefix_v6: self.top_prefix_v6,
            map_entries: self.top_map_entries,
        }
    }

    /// Whether line protocol goes to stdout: always without a network
    /// output (the Telegraf drop-in), otherwise only with `--stdout`.
    pub fn stdout_enabled(&self) -> bool {
        self.stdout || (self.prometheus_listen.is_none() && self.influx_url.is_none())
    }

    /// Which InfluxDB flags go together: the URL with either the 1.x database
    /// or the 2.x bucket and organization. The URL itself, the token file and
    /// the environment's credentials are checked when the writer is set up.
    fn validate_influx_flags(&self) -> Result<(), String> {
        let v2 = [
            ("--influx-bucket", &self.influx_bucket),
            ("--influx-org", &self.influx_org),
        ];
        let Some(url) = &self.influx_url else {
            let stray = [("--influx-db", &self.influx_db)]
                .into_iter()
                .chain(v2)
                .find_map(|(flag, value)| value.as_ref().map(|_| flag))
                .or(self
                    .influx_token_file
                    .as_ref()
                    .map(|_| "--influx-token-file"));
            return match stray {
                Some(flag) => Err(format!("{flag}: needs --influx-url")),
                None => Ok(()),
            };
        };
        for (flag, value) in [("--influx-db", &self.influx_db)].into_iter().chain(v2) {
            if let Some(value) = value {
                if value.is_empty() || value.chars().any(char::is_control) {
                    return Err(format!(
                        "{flag} {value:?}: must be non-empty, without control characters"
                    ));
                }
            }
        }
        match (&self.influx_db, &self.influx_bucket, &self.influx_org) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => Ok(()),
            (Some(_), Some(_), _) => Err(
                "--influx-db with --influx-bucket: choose the 1.x API (--influx-db) or the 2.x API (--influx-bucket and --influx-org)".into(),
            ),
            (Some(_), None, Some(_)) => Err(
                "--influx-org is for the 2.x API (with --influx-bucket), not with --influx-db".into(),
            ),
            (None, Some(_), None) => Err("--influx-bucket needs --influx-org".into()),
            (None, None, Some(_)) => Err("--influx-org needs --influx-bucket".into()),
            (None, None, None) => Err(format!(
                "--influx-url {url}: needs --influx-db DB (InfluxDB 1.x) or --influx-bucket B --influx-org O (2.x)"
            )),
        }
    }
}

fn validate_proc_root(proc_root: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(proc_root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "--proc-root {}: not a directory",
            proc_root.display()
        )),
        Err(e) => Err(format!(
            "--proc-root {}: {}",
            proc_root.display(),
            describe_io(&e)
        )),
    }
}

/// `--netns` values: none (the own namespace), names, or `all`.
fn netns_selection(netns: &[String], policy: NetnsPolicy) -> Result<NetnsSelection, String> {
    if netns.is_empty() {
        return Ok(NetnsSelection::Own);
    }
    if netns.iter().any(|n| n == "all") {
        if netns.len() > 1 {
            return Err("--netns all cannot be combined with namespace names".into());
        }
        return Ok(NetnsSelection::All(policy));
    }
    let mut names = Vec::new();
    for name in netns {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.chars().any(char::is_control)
        {
            return Err(format!(
                "--netns {name:?}: not a namespace name (expected a name from `ip netns list`, or all)"
            ));
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(NetnsSelection::Named(names))
}

/// `IP:PORT`, with IPv6 addresses in brackets: `127.0.0.1:10816`, `[::]:10816`.
pub fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>().map_err(|_| {
        "not an address to listen on (expected IP:PORT, for example 127.0.0.1:10816 or [::]:10816)"
            .to_string()
    })
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// `--top N`: 0 (off) to [`MAX_TOP`], which bounds the series on /metrics.
pub fn parse_top(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_TOP => Ok(n),
        _ => Err(format!(
            "expected a number of sources from 0 (off) to {MAX_TOP}"
        )),
    }
}

/// `--netns-max N`: 1 to 16384.
pub fn parse_netns_max(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN_MAX_NAMESPACES..=MAX_MAX_NAMESPACES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of namespaces from {MIN_MAX_NAMESPACES} to {MAX_MAX_NAMESPACES}"
        )),
    }
}

/// `--top-map-entries N`: 1024 to 2^20.
pub fn parse_top_map_entries(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (MIN_TOP_MAP_ENTRIES..=MAX_TOP_MAP_ENTRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of map entries from {MIN_TOP_MAP_ENTRIES} to {MAX_TOP_MAP_ENTRIES}"
        )),
    }
}

/// `--top-prefix-v4 BITS`: 0 to 32.
pub fn parse_prefix_v4(text: &str) -> Result<u8, String> {
    parse_prefix(text, 32)
}

/// `--top-prefix-v6 BITS`: 0 to 128.
pub fn parse_prefix_v6(text: &str) -> Result<u8, String> {
    parse_prefix(text, 128)
}

fn parse_prefix(text: &str, max: u8) -> Result<u8, String> {
    match text.trim().trim_start_matches('/').parse::<u8>() {
        Ok(bits) if bits <= max => Ok(bits),
        _ => Err(format!(
            "expected a prefix length from 0 to {max} ({max}: each address alone)"
        )),
    }
}

/// `500ms`, `10s`, `1m`, `2h`, or a combination such as `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let total = parse_duration_any(text)?;
    if total < Duration::from_millis(10) {
        return Err(format!("{:?}: must be at least 10ms", text.trim()));
    }
    Ok(total)
}

/// [`parse_duration`] without its lower bound (the flags' ranges are in
/// [`cli_bounds`]).
pub fn parse_duration_any(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (examples: 500ms, 10s, 1m)".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?}: expected a number (examples: 500ms, 10s, 1m)"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => return Err(format!("{text:?}: missing unit (use ms, s, m or h)")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// `KEY=VALUE` with a non-empty key and value, no control characters, and a key
/// that InfluxDB accepts (not starting with `_`).
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    if key.is_empty() || value.is_empty() {
        return Err(format!("{text:?}: key and value must be non-empty"));
    }
    if key.starts_with('_') {
        return Err(format!(
            "{text:?}: tag keys starting with _ are reserved by InfluxDB"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?}: control characters are not allowed"));
    }
    if key.ends_with('\\') || value.ends_with('\\') {
        return Err(format!(
            "{text:?}: line protocol cannot end a key or value with a backslash"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("at least"));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("99999999999999999999999s").is_err());
    }

    #[test]
    fn tags() {
        assert_eq!(parse_tag("dc=ams 1"), Ok(("dc".into(), "ams 1".into())));
        assert_eq!(parse_tag("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag("=x").is_err());
        assert!(parse_tag("x=").is_err());
        assert!(parse_tag("_x=1").is_err());
        assert!(parse_tag("x=a\nb").is_err());
        assert!(parse_tag("x=a\\").is_err());
    }

    #[test]
    fn rate_resolution_bounds() {
        let ok = cli(&["--rate-resolution", "10ms"]).expect("parses");
        assert!(ok.validate().is_ok());
        // Every duration flag takes 10ms at the finest.
        assert!(cli(&["--rate-resolution", "5ms"]).is_err());
        let err = first_line(cli(&["--rate-resolution", "2h"]).expect_err("2h is too coarse"));
        assert!(
            err.contains("for '--rate-resolution <DURATION>': \"2h\": must be between 10ms and 1h"),
            "{err}"
        );
    }

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("synproxy-agent").chain(args.iter().copied()))
    }

    #[test]
    fn netns_selection() {
        let c = cli(&["--netns", "a", "--netns", "b,a"]).unwrap();
        assert_eq!(
            c.validate(),
            Ok(NetnsSelection::Named(vec!["a".into(), "b".into()]))
        );
        let c = cli(&["--netns", "all"]).unwrap();
        assert_eq!(
            c.validate(),
            Ok(NetnsSelection::All(NetnsPolicy {
                max: 1024,
                include_user_owned: false
            }))
        );
        let c = cli(&[
            "--netns",
            "all",
            "--netns-max",
            "3",
            "--netns-include-user-owned",
        ])
        .unwrap();
        assert_eq!(
            c.validate(),
            Ok(NetnsSelection::All(NetnsPolicy {
                max: 3,
                include_user_owned: true
            }))
        );
        for bad in ["0", "16385", "-1", "x", ""] {
            let err = cli(&[&format!("--netns-max={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--netns-max"), "{err}");
            assert!(err.contains("from 1 to 16384"), "{err}");
        }
        assert!(cli(&["--netns-max", "16384"]).is_ok());
        assert!(cli(&["--netns", "all", "--netns", "a"])
            .unwrap()
            .validate()
            .is_err());
        assert!(cli(&["--netns", "../x"]).unwrap().validate().is_err());
        assert_eq!(cli(&[]).unwrap().validate(), Ok(NetnsSelection::Own));
        let err = cli(&["--netns", "a", "--tag", "netns=x"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("--tag netns"), "{err}");
    }

    #[test]
    fn proc_root_errors_name_the_flag() {
        let err = cli(&["--proc-root", "/nonexistent"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err, "--proc-root /nonexistent: no such directory");
        let err = cli(&["--proc-root", "/etc/hostname"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err, "--proc-root /etc/hostname: not a directory");
    }

    #[test]
    fn prometheus_listen_addresses() {
        for ok in ["127.0.0.1:10816", "[::]:10816", "[::1]:0", "0.0.0.0:80"] {
            assert!(parse_listen_addr(ok).is_ok(), "{ok}");
            let c = cli(&["--prometheus-listen", ok]).unwrap();
            assert!(c.validate().is_ok(), "{ok}");
            assert!(!c.stdout_enabled());
        }
        for bad in [
            "10816",
            "localhost:10816",
            "::1:10816",
            "127.0.0.1",
            "1.2.3.4:99999",
            "",
        ] {
            let err = cli(&["--prometheus-listen", bad])
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(
                err.starts_with(&format!("--prometheus-listen {bad:?}: not an address")),
                "{err}"
            );
        }
        let err = cli(&["--once", "--prometheus-listen", "127.0.0.1:10816"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.starts_with("--prometheus-listen 127.0.0.1:10816: not with --once"));
        assert!(cli(&[]).unwrap().stdout_enabled());
        assert!(cli(&["--stdout"]).unwrap().stdout_enabled());
        let both = cli(&["--stdout", "--prometheus-listen", "[::1]:10816"]).unwrap();
        assert!(both.stdout_enabled());
    }

    /// The first line of a clap error (the rest is the `--help` hint).
    fn first_line(err: clap::Error) -> String {
        err.to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn top_flags() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.top_config(), TopConfig::default());
        assert_eq!(
            c.top_config(),
            TopConfig {
                n: 10,
                prefix_v4: 32,
                prefix_v6: 128,
                ..TopConfig::default()
            }
        );
        let c = cli(&[
            "--top",
            "0",
            "--top-prefix-v4",
            "24",
            "--top-prefix-v6",
            "/64",
        ])
        .unwrap();
        assert_eq!(
            c.top_config(),
            TopConfig {
                n: 0,
                prefix_v4: 24,
                prefix_v6: 64,
                ..TopConfig::default()
            }
        );
        assert!(!c.top_config().enabled());
        for (args, flag) in [
            (&["--top", "1001"][..], "--top <N>"),
            (&["--top=-1"], "--top <N>"),
            (&["--top", "ten"], "--top <N>"),
            (&["--top-prefix-v4", "33"], "--top-prefix-v4 <BITS>"),
            (&["--top-prefix-v6", "129"], "--top-prefix-v6 <BITS>"),
            (&["--top-prefix-v6", "x"], "--top-prefix-v6 <BITS>"),
        ] {
            let err = first_line(cli(args).expect_err("out of range"));
            assert!(err.contains(&format!("for '{flag}'")), "{err}");
            assert!(err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn top_flags_have_agent_variables_and_top_reads_none() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for (id, var) in [
            ("top", "SYNPROXY_AGENT_TOP"),
            ("top_prefix_v4", "SYNPROXY_AGENT_TOP_PREFIX_V4"),
            ("top_prefix_v6", "SYNPROXY_AGENT_TOP_PREFIX_V6"),
        ] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id);
            assert_eq!(
                arg.and_then(|a| a.get_env()),
                Some(std::ffi::OsStr::new(var)),
                "{id}"
            );
            let sub = cmd.find_subcommand("top").expect("top command");
            let arg = sub.get_arguments().find(|a| a.get_id() == id);
            assert!(arg.is_some_and(|a| a.get_env().is_none()), "top {id}");
        }
    }

    #[test]
    fn top_command_takes_the_top_flags() {
        let parsed = Cli::try_parse_from([
            "synproxy-agent",
            "top",
            "--top",
            "5",
            "--top-prefix-v4",
            "16",
        ])
        .unwrap();
        let Some(Command::Top(args)) = parsed.command else {
            panic!("not the top command");
        };
        assert_eq!(
            args.top_config(),
            TopConfig {
                n: 5,
                prefix_v4: 16,
                prefix_v6: 128,
                ..TopConfig::default()
            }
        );
        let err = Cli::try_parse_from(["synproxy-agent", "top", "--top-prefix-v4", "40"])
            .expect_err("out of range");
        assert!(first_line(err).contains("--top-prefix-v4"));
    }

    #[test]
    fn once_conflicts_with_stdin_signal() {
        assert!(cli(&["--once", "--signal", "stdin"]).is_err());
        assert!(cli(&["--interval", "5x"]).is_err());
    }
}

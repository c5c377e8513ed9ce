//! Drives every SYNPROXY counter with real traffic in fresh network namespaces and
//! checks the agent against /proc. Prints one `RESULT ...` line per combination,
//! then `SUMMARY passed=N failed=M`; exits 1 if anything failed.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use synproxy_common::Counter;
use synproxy_tests::rules::{Family, Flavour};
use synproxy_tests::scenario::{self, AgentMode, Config, EbpfMode};
use synproxy_tests::tools::{self, Tools};
use synproxy_tests::{
    caps, check, clean_state, ebpf_checks, ebpf_cost, lifecycle, non_root, pidns, sustained,
    top_sources, top_view, user_netns_check,
};

const USAGE: &str = "usage: synproxy-scenario --agent PATH [--rules xt|nft|all] \
[--family ipv4|ipv6|all] [--counter NAME|all] [--count N] [--ip PATH] [--iptables PATH] \
[--ip6tables PATH] [--nft PATH] [--server-netns NAME] [--agent-mode inside|netns|both] \
[--extra-agent-arg ARG]... [--ebpf auto|require|off] [--probes kprobe|fentry] [--flood [--flood-syn N] [--flood-ack N]] \
[--sustained [--sustained-syn N] [--sustained-ack N] [--sustained-secs S]] \
[--lifecycle [--lifecycle-delays MS,MS,...]] [--non-root] [--top-sources] \
[--ebpf-cost [--cost-syn N] [--cost-throughput-syn N] [--cost-runs N] [--cost-enforce-throughput]] \
[--top-view] [--user-netns [--user-netns-count N]]";

struct Args {
    cfg: Config,
    rules: Vec<Flavour>,
    families: Vec<Family>,
    counters: Vec<Counter>,
    /// Run the eBPF flood and shutdown checks instead of the matrix.
    flood: Option<(u32, u32)>,
    /// Run the sustained-flood check instead of the matrix.
    sustained: Option<sustained::Params>,
    /// Run the lifecycle checks instead of the matrix (explicit delays, if any).
    lifecycle: Option<Option<Vec<u64>>>,
    /// Run the non-root check (eBPF as uid 65534) instead of the matrix.
    non_root: bool,
    /// Run the eBPF cost check instead of the matrix.
    cost: Option<ebpf_cost::Params>,
    /// Run the top-sources checks (ground truth per selected rules and family,
    /// then the spoofed flood) instead of the matrix.
    top_sources: bool,
    /// Run the live view's check (`synproxy-agent top` in tmux) instead of the matrix.
    top_view: bool,
    /// Run the unprivileged-namespaces check with this many namespaces.
    user_netns: Option<usize>,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag} {value:?} is not a number"))
}

fn parse_args() -> Result<Args> {
    let mut agent = None;
    let mut tools = Tools::default();
    let mut rules = vec![Flavour::Xt, Flavour::Nft];
    let mut families = vec![Family::Ipv4, Family::Ipv6];
    let mut counters = Counter::ALL.to_vec();
    let mut count = 5;
    let mut server_netns = None;
    let mut extra = Vec::new();
    let mut agent_mode = AgentMode::Both;
    let mut ebpf = EbpfMode::Auto;
    let mut flood = false;
    let (mut flood_syn, mut flood_ack) = (20_000u32, 5_000u32);
    let mut sustained = None;
    let mut sustained_params = sustained::Params::default();
    let mut lifecycle = None;
    let mut delays = None;
    let mut non_root = false;
    let mut top_sources = false;
    let mut cost = None;
    let mut cost_params = ebpf_cost::Params::default();
    let mut fentry = false;
    let mut top_view = false;
    let mut user_netns = false;
    let mut user_netns_count = user_netns_check::DEFAULT_COUNT;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--flood" {
            flood = true;
            continue;
        }
        if flag == "--sustained" {
            sustained = Some(());
            continue;
        }
        if flag == "--lifecycle" {
            lifecycle = Some(());
            continue;
        }
        if flag == "--non-root" {
            non_root = true;
            continue;
        }
        if flag == "--top-sources" {
            top_sources = true;
            continue;
        }
        if flag == "--ebpf-cost" {
            cost = Some(());
            continue;
        }
        if flag == "--top-view" {
            top_view = true;
            continue;
        }
        if flag == "--user-netns" {
            user_netns = true;
            continue;
        }
        if flag == "--cost-enforce-throughput" {
            cost_params.enforce_throughput = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--agent" => agent = Some(PathBuf::from(value)),
            "--rules" => {
                rules = match value.as_str() {
                    "all" => vec![Flavour::Xt, Flavour::Nft],
                    v => vec![Flavour::parse(v)?],
                }
            }
            "--family" => {
                families = match value.as_str() {
                    "all" => vec![Family::Ipv4, Family::Ipv6],
                    v => vec![Family::parse(v)?],
                }
            }
            "--counter" => {
                counters = match value.as_str() {
                    "all" => Counter::ALL.to_vec(),
                    v => vec![scenario::parse_counter(v)?],
                }
            }
            "--count" => {
                count = value
                    .parse()
                    .with_context(|| format!("--count {value:?} is not a number"))?
            }
            "--ip" => tools.ip = value.into(),
            "--iptables" => tools.iptables = value.into(),
            "--ip6tables" => tools.ip6tables = value.into(),
            "--nft" => tools.nft = value.into(),
            "--server-netns" => server_netns = Some(value),
            "--agent-mode" => agent_mode = AgentMode::parse(&value)?,
            "--extra-agent-arg" => extra.push(value),
            "--ebpf" => ebpf = EbpfMode::parse(&value)?,
            "--probes" => match value.as_str() {
                "kprobe" => fentry = false,
                "fentry" => fentry = true,
                other => bail!("--probes {other:?}: expected kprobe or fentry"),
            },
            "--flood-syn" => {
                flood_syn = value
                    .parse()
                    .with_context(|| format!("--flood-syn {value:?} is not a number"))?
            }
            "--flood-ack" => {
                flood_ack = value
                    .parse()
                    .with_context(|| format!("--flood-ack {value:?} is not a number"))?
            }
            "--user-netns-count" => user_netns_count = number(&flag, &value)?,
            "--sustained-syn" => sustained_params.syns = number(&flag, &value)?,
            "--sustained-ack" => sustained_params.acks = number(&flag, &value)?,
            "--sustained-secs" => sustained_params.secs = number(&flag, &value)?,
            "--cost-syn" => cost_params.syns = number(&flag, &value)?,
            "--cost-throughput-syn" => cost_params.throughput_syns = number(&flag, &value)?,
            "--cost-runs" => cost_params.runs = number(&flag, &value)?,
            "--lifecycle-delays" => {
                delays = Some(
                    value
                        .split(',')
                        .map(|v| number(&flag, v.trim()))
                        .collect::<Result<Vec<u64>>>()?,
                )
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let agent = agent.with_context(|| format!("--agent is required\n{USAGE}"))?;
    if fentry {
        extra.extend(["--probes".to_string(), "fentry".to_string()]);
    }
    if !agent.is_file() {
        bail!("agent binary {} not found", agent.display());
    }
    Ok(Args {
        cfg: Config {
            tools,
            agent,
            extra_agent_args: extra,
            server_netns,
            count,
            agent_mode,
            ebpf,
            fentry,
        },
        rules,
        families,
        counters,
        flood: flood.then_some((flood_syn, flood_ack)),
        sustained: sustained.map(|()| sustained_params),
        lifecycle: lifecycle.map(|()| delays),
        non_root,
        cost: cost.map(|()| cost_params),
        top_sources,
        top_view,
        user_netns: user_netns.then_some(user_netns_count),
    })
}

fn main() {
    // Helper mode first, while the process is single-threaded (unshare + fork).
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == caps::HELPER_FLAG) {
        // Returns only if it could not exec the program.
        if let Err(e) = caps::helper_main(&raw[1..]) {
            eprintln!("synproxy-scenario {}: {e:#}", caps::HELPER_FLAG);
        }
        std::process::exit(125);
    }
    if raw.first().is_some_and(|a| a == pidns::HELPER_FLAG) {
        match pidns::helper_main(&raw[1..]) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("synproxy-scenario {}: {e:#}", pidns::HELPER_FLAG);
                std::process::exit(125);
            }
        }
    }
    if raw.first().is_some_and(|a| a == clean_state::HELPER_FLAG) {
        let rest: Vec<String> = raw[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match clean_state::helper_main(&tools::kernel_release(), &rest) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("synproxy-scenario {}: {e:#}", clean_state::HELPER_FLAG);
                std::process::exit(2);
            }
        }
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("synproxy-scenario: {e:#}");
            std::process::exit(2);
        }
    };
    let kernel = tools::kernel_release();
    let (mut passed, mut failed) = (0u32, 0u32);
    // The check modes print each check as soon as it is done: a guest that runs
    // out of time keeps the lines of the checks that finished.
    let cfg = &args.cfg;
    let kernel = kernel.as_str();
    type Run<'a> = Box<dyn Fn() -> Vec<check::Check> + 'a>;
    let mut checks: Vec<(&str, Run)> = Vec::new();
    if let Some((syns, acks)) = args.flood {
        checks.push((
            "flood",
            Box::new(move || vec![ebpf_checks::flood(cfg, kernel, syns, acks)]),
        ));
        checks.push(("shutdown", Box::new(|| ebpf_checks::shutdown(cfg, kernel))));
    }
    if let Some(params) = &args.sustained {
        checks.push((
            "sustained",
            Box::new(move || vec![sustained::sustained(cfg, kernel, params)]),
        ));
    }
    if let Some(delays) = &args.lifecycle {
        checks.push((
            "sigterm-during-startup",
            Box::new(move || {
                vec![lifecycle::sigterm_during_startup(
                    cfg,
                    kernel,
                    delays.as_deref(),
                )]
            }),
        ));
        checks.push((
            "kill9-restart",
            Box::new(|| vec![lifecycle::kill9_restart(cfg, kernel)]),
        ));
        checks.push((
            "two-agents",
            Box::new(|| vec![lifecycle::two_agents(cfg, kernel)]),
        ));
    }
    if args.non_root {
        checks.push((
            "non-root",
            Box::new(|| vec![non_root::non_root(cfg, kernel)]),
        ));
    }
    if args.top_sources {
        let (rules, families) = (&args.rules, &args.families);
        checks.push((
            "top-sources",
            Box::new(move || top_sources::ground_truth(cfg, kernel, rules, families)),
        ));
        checks.push((
            "top-sources-flood",
            Box::new(|| vec![top_sources::flood(cfg, kernel)]),
        ));
    }
    if let Some(params) = &args.cost {
        checks.push((
            "ebpf-cost",
            Box::new(move || vec![ebpf_cost::ebpf_cost(cfg, kernel, params)]),
        ));
    }
    if args.top_view {
        checks.push((
            "top-view",
            Box::new(|| vec![top_view::top_view(cfg, kernel)]),
        ));
    }
    if let Some(count) = args.user_netns {
        checks.push((
            "user-netns",
            Box::new(move || vec![user_netns_check::user_netns(cfg, kernel, count)]),
        ));
    }
    if !checks.is_empty() {
        for (name, run) in checks {
            // In the VM suite: only from the kernel state before the first check.
            if !clean_state::gate(kernel, name) {
                failed += 1;
                continue;
            }
            for check in run() {
                for line in check.report() {
                    println!("{line}");
                }
                if check.pass {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        println!("SUMMARY passed={passed} failed={failed}");
        std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
    }
    let combos = scenario::combos(&args.rules, &args.families, &args.counters);
    if combos.is_empty() {
        // Never succeed on zero checks.
        println!(
            "# error: no combination selected (cookie_retrans and conn_reopened are IPv4-only)"
        );
    }
    for combo in combos {
        let name = format!(
            "matrix-{}-{}-{}",
            combo.rules.name(),
            combo.family.name(),
            combo.counter.name()
        );
        if !clean_state::gate(kernel, &name) {
            failed += 1;
            continue;
        }
        let outcome = scenario::run_combo(&args.cfg, combo);
        println!("{}", outcome.result_line(kernel));
        for note in &outcome.notes {
            println!("# {note}");
        }
        if outcome.pass {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("SUMMARY passed={passed} failed={failed}");
    std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
}

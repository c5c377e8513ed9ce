//! Host-kernel integration tests: real netns, real SYNPROXY rules, real traffic,
//! real agent. Need root, iproute2, iptables/ip6tables and nft; skipped with a
//! message when missing, unless CI=true (then they fail).

use std::path::{Path, PathBuf};
use std::process::Command;
use synproxy_common::{Counter, STAT_COLUMNS};
use synproxy_tests::netns::Topology;
use synproxy_tests::rules::{Family, Flavour, ServerRules, PROTECTED_PORT};
use synproxy_tests::scenario::ipv4_only;
use synproxy_tests::tools::{find_program, Tools};
use synproxy_tests::traffic::{self, ServerMode, TcpServer};
use synproxy_tests::{agent, proc_counters};

/// Missing prerequisites: `Err` (fail) on CI, `Ok(false)` (skip) elsewhere.
fn prerequisites() -> Result<bool, String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid() has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for prog in ["ip", "iptables", "ip6tables", "nft"] {
        if find_program(Path::new(prog)).is_none() {
            missing.push(format!("`{prog}` in PATH"));
        }
    }
    if !Path::new("/proc/net/stat/synproxy").exists() {
        missing.push("/proc/net/stat/synproxy (SYNPROXY support in the kernel)".to_string());
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let msg = format!("host kernel tests need: {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        Err(format!("{msg} (CI=true, so this is a failure)"))
    } else {
        eprintln!("SKIPPED: {msg}");
        Ok(false)
    }
}

macro_rules! require_prerequisites {
    () => {
        match prerequisites() {
            Ok(true) => {}
            Ok(false) => return,
            Err(msg) => panic!("{msg}"),
        }
    };
}

/// target/<profile>/synproxy-agent, next to this test's deps/ directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let agent = profile_dir.join("synproxy-agent");
    assert!(
        agent.is_file(),
        "agent binary {} is missing: run `cargo build -p synproxy-user` first",
        agent.display()
    );
    agent
}

fn run_scenario(rules: &str, family: &str, extra: &[&str]) {
    let agent = agent_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_synproxy-scenario"))
        .arg("--agent")
        .arg(&agent)
        .args(["--rules", rules, "--family", family])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run synproxy-scenario: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .collect();
    let fam = Family::parse(family).unwrap_or_else(|e| panic!("{e}"));
    for counter in Counter::ALL {
        if fam == Family::Ipv6 && ipv4_only(counter) {
            continue;
        }
        let key = format!("rules={rules} family={family} counter={} ", counter.name());
        assert!(
            results.iter().any(|l| l.contains(&key)),
            "no RESULT line for {key}in:\n{stdout}"
        );
    }
    for line in &results {
        assert!(
            line.ends_with("status=PASS"),
            "check failed: {line}\n{stdout}"
        );
    }
    assert!(
        out.status.success(),
        "synproxy-scenario exited with {}",
        out.status
    );
    assert!(
        stdout.contains(&format!("SUMMARY passed={} failed=0", results.len())),
        "bad summary:\n{stdout}"
    );
}

#[test]
fn xt_ipv4_all_counters() {
    require_prerequisites!();
    run_scenario("xt", "ipv4", &[]);
}

#[test]
fn xt_ipv6_all_counters() {
    require_prerequisites!();
    run_scenario("xt", "ipv6", &[]);
}

#[test]
fn nft_ipv4_all_counters() {
    require_prerequisites!();
    run_scenario("nft", "ipv4", &[]);
}

#[test]
fn nft_ipv6_all_counters() {
    require_prerequisites!();
    run_scenario("nft", "ipv6", &[]);
}

/// The driver's --server-netns mode: an existing netns is used and left in place.
#[test]
fn existing_server_netns_is_reused_and_kept() {
    require_prerequisites!();
    let name = format!("spx-test-{}-keep", std::process::id());
    let tools = Tools::default();
    let ns =
        synproxy_tests::netns::Netns::create(&tools, &name).unwrap_or_else(|e| panic!("{e:#}"));
    run_scenario(
        "xt",
        "ipv4",
        &[
            "--server-netns",
            &name,
            "--count",
            "2",
            "--agent-mode",
            "inside",
        ],
    );
    assert!(
        Path::new("/run/netns").join(&name).exists(),
        "netns {name} was deleted"
    );
    drop(ns);
}

/// Every field of the agent, run inside the netns and via `--netns NAME` from the
/// root netns, equals the kernel's totals after real traffic.
#[test]
fn agent_inside_and_netns_flag_agree_with_proc() {
    require_prerequisites!();
    let agent_path = agent_binary();
    let tools = Tools::default();
    let topo = Topology::create(&tools, None).unwrap_or_else(|e| panic!("{e:#}"));
    let _rules = ServerRules::install(&tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let _server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let dst = std::net::SocketAddr::new(topo.srv4.into(), PROTECTED_PORT);
    let _conns: Vec<_> = (0..3)
        .map(|_| {
            traffic::connect(&topo.cli, dst, std::time::Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    // Let the handshakes towards the server finish before comparing.
    _server
        .wait_accepted(3, std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let inside = agent::run_inside(&topo.srv, &agent_path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let flag =
        agent::run_with_netns_flag(&topo.srv, &agent_path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let totals = proc_counters::read(&topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        totals.get("cookie_valid") >= 3,
        "no traffic counted: {totals:?}"
    );
    for name in STAT_COLUMNS {
        let want = totals.get(name);
        assert_eq!(
            inside.counter(name).ok(),
            Some(want),
            "inside netns: {name}"
        );
        assert_eq!(flag.counter(name).ok(), Some(want), "--netns: {name}");
    }
    assert_eq!(
        flag.tags.get("netns").map(String::as_str),
        Some(topo.srv.name())
    );
    assert!(
        !inside.tags.contains_key("netns"),
        "inside run has a netns tag"
    );
}

/// `--netns all` from the root netns: one line per namespace, each equal to that
/// namespace's own kernel totals (namespaces count independently), and the
/// initial namespace is labelled `init`.
#[test]
fn netns_all_reports_every_namespace_separately() {
    require_prerequisites!();
    let agent_path = agent_binary();
    let tools = Tools::default();
    let mut topologies = Vec::new();
    for connections in [3u64, 1] {
        let topo = Topology::create(&tools, None).unwrap_or_else(|e| panic!("{e:#}"));
        let rules =
            ServerRules::install(&tools, &topo.srv, Flavour::Nft, Family::Ipv4, &topo.srv_if)
                .unwrap_or_else(|e| panic!("{e:#}"));
        let server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let dst = std::net::SocketAddr::new(topo.srv4.into(), PROTECTED_PORT);
        let conns: Vec<_> = (0..connections)
            .map(|_| {
                traffic::connect(&topo.cli, dst, std::time::Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{e:#}"))
            })
            .collect();
        server
            .wait_accepted(connections, std::time::Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"));
        topologies.push((topo, rules, server, conns, connections));
    }

    let out = Command::new(&agent_path)
        .args(["--once", "--no-ebpf", "--netns", "all"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the agent: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<synproxy_tests::line_protocol::Line> = stdout
        .lines()
        .map(|l| {
            synproxy_tests::line_protocol::parse_line(l).unwrap_or_else(|e| panic!("{e:#}: {l}"))
        })
        .collect();
    let line_for = |label: &str| {
        let matching: Vec<_> = lines
            .iter()
            .filter(|l| l.tags.get("netns").map(String::as_str) == Some(label))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "want one line for netns={label}:\n{stdout}"
        );
        matching[0]
    };
    assert!(
        lines
            .iter()
            .any(|l| l.tags.get("netns").map(String::as_str) == Some("init")),
        "no netns=init line:\n{stdout}"
    );
    for (topo, _rules, _server, _conns, connections) in &topologies {
        let totals = proc_counters::read(&topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(totals.get("cookie_valid"), *connections, "{totals:?}");
        let line = line_for(topo.srv.name());
        for name in STAT_COLUMNS {
            assert_eq!(
                line.counter(name).ok(),
                Some(totals.get(name)),
                "netns {} {name}",
                topo.srv.name()
            );
        }
        // The client side runs no SYNPROXY rules: its own counters stay 0.
        let client = line_for(topo.cli.name());
        assert_eq!(client.counter("syn_received").ok(), Some(0));
    }
}

/// `--sustained` on the host kernel (no kprobes: /proc only): the rules on two
/// ports, 20+ namespaces, the paced sender and the round parsing, with the agent's
/// totals equal to /proc and /proc equal to what was driven.
#[test]
fn sustained_flood_proc_only() {
    require_prerequisites!();
    let agent = agent_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_synproxy-scenario"))
        .arg("--agent")
        .arg(&agent)
        .args([
            "--sustained",
            "--sustained-syn",
            "20000",
            "--sustained-ack",
            "6000",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run synproxy-scenario: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT ") && l.contains("check=sustained"))
        .unwrap_or_else(|| panic!("no sustained RESULT line:\n{stdout}"));
    assert!(line.ends_with("status=PASS"), "{line}\n{stdout}");
    assert!(
        line.contains(" proc_syn=20000 ") && line.contains(" proc_inv=6000 "),
        "{line}"
    );
    assert!(out.status.success(), "exit status {}", out.status);
}

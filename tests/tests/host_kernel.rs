//! Host-kernel integration tests: real netns, real SYNPROXY rules, real traffic,
//! real agent. Need root, iproute2, iptables/ip6tables and nft; skipped with a
//! message when missing, unless CI=true (then they fail).

use std::path::{Path, PathBuf};
use std::process::Command;
use synproxy_common::{Counter, STAT_COLUMNS};
use synproxy_tests::connections::Connections;
use synproxy_tests::harness::{agent_binary, wait_until, Needs};
use synproxy_tests::netns::Topology;
use synproxy_tests::require;
use synproxy_tests::rules::{Family, Flavour, ServerRules};
use synproxy_tests::scenario::ipv4_only;
use synproxy_tests::tools::Tools;
use synproxy_tests::{agent, proc_counters};

const NEEDS: Needs = Needs {
    what: "host kernel tests",
    root: true,
    programs: &["ip", "iptables", "ip6tables", "nft"],
    synproxy: true,
};

fn run_scenario(rules: &str, family: &str, extra: &[&str]) {
    let agent = agent_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_synproxy-scenario"))
        .arg("matrix")
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
    require!(NEEDS.check());
    run_scenario("xt", "ipv4", &[]);
}

#[test]
fn xt_ipv6_all_counters() {
    require!(NEEDS.check());
    run_scenario("xt", "ipv6", &[]);
}

#[test]
fn nft_ipv4_all_counters() {
    require!(NEEDS.check());
    run_scenario("nft", "ipv4", &[]);
}

#[test]
fn nft_ipv6_all_counters() {
    require!(NEEDS.check());
    run_scenario("nft", "ipv6", &[]);
}

/// The driver's --server-netns mode: an existing netns is used and left in place.
#[test]
fn existing_server_netns_is_reused_and_kept() {
    require!(NEEDS.check());
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
    require!(NEEDS.check());
    let agent_path = agent_binary();
    let tools = Tools::default();
    let connections = Connections::open(&tools, None, Flavour::Xt, 3);
    let topo = &connections.topo;

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
    require!(NEEDS.check());
    let agent_path = agent_binary();
    let tools = Tools::default();
    let topologies: Vec<(Connections, u64)> = [3u64, 1]
        .into_iter()
        .map(|n| (Connections::open(&tools, None, Flavour::Nft, n), n))
        .collect();

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
            .filter(|l| l.measurement == "synproxy")
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
    for (Connections { topo, .. }, connections) in &topologies {
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

// ---- Namespaces by identity: series follow the namespace, not its label ----

/// A long-running agent in `--signal stdin` mode: one round per request.
struct RoundAgent(synproxy_tests::round_agent::RoundAgent);

impl RoundAgent {
    fn start(args: &[&str]) -> Self {
        let args = ["--log-level", "debug"].iter().chain(args);
        Self(synproxy_tests::round_agent::RoundAgent::start(
            args,
            std::process::Stdio::inherit(),
        ))
    }

    /// Asks for one round and returns its lines (all share one timestamp).
    fn round(&mut self) -> Vec<synproxy_tests::line_protocol::Line> {
        self.0
            .round()
            .iter()
            .map(|l| {
                synproxy_tests::line_protocol::parse_line(l)
                    .unwrap_or_else(|e| panic!("{e:#}: {l}"))
            })
            .collect()
    }
}

fn lines_labelled<'a>(
    lines: &'a [synproxy_tests::line_protocol::Line],
    label: &str,
) -> Vec<&'a synproxy_tests::line_protocol::Line> {
    lines
        .iter()
        .filter(|l| l.tags.get("netns").map(String::as_str) == Some(label))
        .collect()
}

/// Asserts exactly one line labelled `label` and that it equals `kernel`.
fn assert_reports(
    lines: &[synproxy_tests::line_protocol::Line],
    label: &str,
    kernel: &proc_counters::Totals,
    when: &str,
) {
    let matching = lines_labelled(lines, label);
    assert_eq!(matching.len(), 1, "{when}: want one line netns={label}");
    for counter in synproxy_common::Counter::ALL {
        let name = counter.name();
        assert_eq!(
            matching[0].counter(name).ok(),
            Some(kernel.get(name)),
            "{when}: netns={label} {name} (kernel {kernel:?})"
        );
    }
}

/// Real connections through SYNPROXY into the existing namespace `srv`.
fn drive_connections(tools: &Tools, srv: &str, connections: u64) {
    drop(Connections::open(
        tools,
        Some(srv),
        Flavour::Xt,
        connections,
    ));
}

/// `prog args`, which must succeed.
fn run_cmd(prog: &str, args: &[&str]) {
    synproxy_tests::tools::run(Path::new(prog), args).unwrap_or_else(|e| panic!("{e:#}"));
}

fn run_ip(args: &[&str]) {
    run_cmd("ip", args);
}

fn nsfs_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// A namespace that loses its name while a process keeps it alive, is named
/// again, then is only held by a bind mount elsewhere (undiscoverable) and
/// named again: `--netns all` reports the kernel's totals throughout, never
/// doubled, and under the label it has at the time.
#[test]
fn netns_identity_survives_losing_its_name_and_being_undiscoverable() {
    require!(NEEDS.check());
    let tools = Tools::default();
    let name = format!("spx-id-{}-rename", std::process::id());
    let ns =
        synproxy_tests::netns::Netns::create(&tools, &name).unwrap_or_else(|e| panic!("{e:#}"));
    drive_connections(&tools, &name, 2);
    let kernel = proc_counters::read(&ns).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        kernel.get("cookie_valid") >= 2,
        "no traffic counted: {kernel:?}"
    );
    let handle = Path::new("/run/netns").join(&name);
    let inode = nsfs_inode(&handle);
    let unnamed = format!("ns-{inode}");

    let mut holder = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "600"])
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start a process in {name}: {e}"));
    let holder_ns = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&holder_ns)
        .map(|_| nsfs_inode(&holder_ns))
        .ok()
        != Some(inode)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the holder process to enter {name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let mut agent = RoundAgent::start(&["--netns", "all"]);
    assert_reports(&agent.round(), &name, &kernel, "named");

    run_ip(&["netns", "del", &name]);
    let lines = agent.round();
    assert!(
        lines_labelled(&lines, &name).is_empty(),
        "name still reported"
    );
    assert_reports(&lines, &unnamed, &kernel, "unnamed, held by a process");

    run_ip(&["netns", "attach", &name, &holder.id().to_string()]);
    assert_eq!(nsfs_inode(&handle), inode, "attach named another namespace");
    let lines = agent.round();
    assert_reports(&lines, &name, &kernel, "named again");
    assert!(lines_labelled(&lines, &unnamed).is_empty());

    // Held only by a bind mount outside /run/netns: no process, no name.
    let hold = std::env::temp_dir().join(format!("spx-hold-{}", std::process::id()));
    std::fs::write(&hold, b"").unwrap_or_else(|e| panic!("{}: {e}", hold.display()));
    let hold_s = hold.to_string_lossy().to_string();
    run_cmd("mount", &["--bind", &handle.to_string_lossy(), &hold_s]);
    let _ = holder.kill();
    let _ = holder.wait();
    run_ip(&["netns", "del", &name]);
    let lines = agent.round();
    assert!(lines_labelled(&lines, &name).is_empty());
    assert!(lines_labelled(&lines, &unnamed).is_empty());

    std::fs::write(&handle, b"").unwrap_or_else(|e| panic!("{}: {e}", handle.display()));
    run_cmd("mount", &["--bind", &hold_s, &handle.to_string_lossy()]);
    run_cmd("umount", &[&hold_s]);
    let _ = std::fs::remove_file(&hold);
    assert_eq!(nsfs_inode(&handle), inode);
    assert_reports(
        &agent.round(),
        &name,
        &kernel,
        "back after being undiscoverable",
    );
    drop(agent);
    drop(ns);
}

/// A new namespace that reuses a name is a new namespace: its totals are its
/// own kernel's, with `--netns NAME` and with `--netns all`.
#[test]
fn netns_reusing_a_name_is_a_new_namespace() {
    require!(NEEDS.check());
    let tools = Tools::default();
    let name = format!("spx-id-{}-reuse", std::process::id());
    let ns =
        synproxy_tests::netns::Netns::create(&tools, &name).unwrap_or_else(|e| panic!("{e:#}"));
    drive_connections(&tools, &name, 3);
    let first = proc_counters::read(&ns).unwrap_or_else(|e| panic!("{e:#}"));
    let mut named = RoundAgent::start(&["--netns", &name]);
    let mut all = RoundAgent::start(&["--netns", "all"]);
    assert_reports(
        &named.round(),
        &name,
        &first,
        "--netns NAME, first namespace",
    );
    assert_reports(&all.round(), &name, &first, "--netns all, first namespace");

    drop(ns);
    let ns =
        synproxy_tests::netns::Netns::create(&tools, &name).unwrap_or_else(|e| panic!("{e:#}"));
    drive_connections(&tools, &name, 1);
    let second = proc_counters::read(&ns).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(second.get("cookie_valid"), 1, "{second:?}");
    assert_reports(
        &named.round(),
        &name,
        &second,
        "--netns NAME, new namespace",
    );
    assert_reports(&all.round(), &name, &second, "--netns all, new namespace");
    drop(named);
    drop(all);
    drop(ns);
}

/// A namespace named `init` does not share a series with the initial
/// namespace: labels are unique in each round (the unnamed initial namespace
/// becomes `ns-<inode>`), and without traffic no total moves.
#[test]
fn netns_named_init_does_not_collide_with_the_initial_namespace() {
    require!(NEEDS.check());
    let tools = Tools::default();
    let initial = format!("ns-{}", nsfs_inode(Path::new("/proc/self/ns/net")));
    if Path::new("/run/netns/init").exists() {
        panic!("/run/netns/init exists already: cannot test the collision");
    }
    let ns =
        synproxy_tests::netns::Netns::create(&tools, "init").unwrap_or_else(|e| panic!("{e:#}"));
    let named_kernel = proc_counters::read(&ns).unwrap_or_else(|e| panic!("{e:#}"));
    let own_kernel = proc_counters::read_current_thread().unwrap_or_else(|e| panic!("{e:#}"));
    let mut agent = RoundAgent::start(&["--netns", "all"]);
    for round in 0..3 {
        let lines = agent.round();
        let mut labels: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.tags.get("netns").map(String::as_str))
            .collect();
        labels.sort_unstable();
        let total = labels.len();
        labels.dedup();
        assert_eq!(
            labels.len(),
            total,
            "round {round}: duplicate labels {labels:?}"
        );
        assert_reports(&lines, "init", &named_kernel, "the namespace named init");
        assert_reports(&lines, &initial, &own_kernel, "the initial namespace");
    }
    drop(agent);
    drop(ns);
}

/// `sustained` on the host kernel (no kprobes: /proc only): the rules on two
/// ports, 20+ namespaces, the paced sender and the round parsing, with the agent's
/// totals equal to /proc and /proc equal to what was driven.
#[test]
fn sustained_flood_proc_only() {
    require!(NEEDS.check());
    let agent = agent_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_synproxy-scenario"))
        .arg("--agent")
        .arg(&agent)
        .args(["sustained", "--syn", "20000", "--ack", "6000"])
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

// ---- Prometheus: a real server scraping the agent during real traffic ----

/// `prometheus` and `promtool` (Debian package `prometheus`).
const PROMETHEUS_NEEDS: Needs = Needs {
    what: "Prometheus tests (apt-get install prometheus; cargo xtask test installs it)",
    root: false,
    programs: &["prometheus", "promtool"],
    synproxy: false,
};

/// The agent serving /metrics, with its stderr drained on a thread.
struct MetricsAgent {
    child: std::process::Child,
    addr: String,
}

impl MetricsAgent {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agent_binary())
            .args(args)
            .args(["--prometheus-listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("agent: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timeout waiting for the agent to log its metrics address (60s)");
            };
            if let Some((_, rest)) = line.split_once("Prometheus metrics on http://") {
                break rest.trim_end_matches("/metrics").to_string();
            }
        };
        Self { child, addr }
    }

    /// Stops the agent (SIGTERM) and returns what it printed on stdout.
    fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the agent: {e}"));
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut stdout);
        }
        (status.code(), stdout)
    }
}

/// Prometheus's view of the /proc counters of namespace `label` equals the
/// kernel's totals `kernel`.
fn prometheus_matches(
    server: &synproxy_tests::prometheus::PrometheusServer,
    label: &str,
    kernel: &proc_counters::Totals,
) -> Result<(), String> {
    for counter in Counter::ALL {
        let expr = format!(
            "synproxy_{}_total{{job=\"{}\",netns=\"{label}\"}}",
            counter.name(),
            synproxy_tests::prometheus::JOB
        );
        let series = server.query(&expr).map_err(|e| format!("{e:#}"))?;
        let [one] = series.as_slice() else {
            return Err(format!(
                "{expr}: {} series, want 1: {series:?}",
                series.len()
            ));
        };
        let want = kernel.get(counter.name()) as f64;
        if one.value != want {
            return Err(format!("{expr} = {}, kernel {want}", one.value));
        }
    }
    Ok(())
}

/// Debian's `prometheus` scrapes the agent (`--netns all`) every second while
/// real connections go through SYNPROXY in two server namespaces: its query
/// API returns each namespace's kernel totals under the namespace's line
/// protocol label, first after the traffic into one, then after more traffic
/// into the other; `promtool check metrics` finds nothing in the exposition;
/// stdout stays quiet.
#[test]
fn prometheus_server_scrapes_kernel_totals_per_namespace() {
    require!(NEEDS.check());
    require!(PROMETHEUS_NEEDS.check());
    let tools = Tools::default();
    let agent = MetricsAgent::start(&["--netns", "all", "--interval", "500ms", "--no-ebpf"]);
    let server =
        synproxy_tests::prometheus::PrometheusServer::start(std::slice::from_ref(&agent.addr))
            .unwrap_or_else(|e| panic!("{e:#}"));
    let timeout = std::time::Duration::from_secs(120);
    wait_until("prometheus to scrape the agent (up == 1)", timeout, || {
        let up = server
            .query(&format!(
                "up{{job=\"{}\"}}",
                synproxy_tests::prometheus::JOB
            ))
            .map_err(|e| format!("{e:#}"))?;
        match up.as_slice() {
            [s] if s.value == 1.0 => Ok(()),
            other => Err(format!("up = {other:?}; prometheus log:\n{}", server.log())),
        }
    });

    // Traffic into the first namespace while scrapes go on.
    let first = Connections::open(&tools, None, Flavour::Xt, 3);
    let first_kernel = proc_counters::read(&first.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(first_kernel.get("cookie_valid") >= 3, "{first_kernel:?}");
    let first_label = first.topo.srv.name().to_string();
    wait_until(
        &format!("prometheus to hold the kernel's totals of {first_label}"),
        timeout,
        || prometheus_matches(&server, &first_label, &first_kernel),
    );

    // Then into a second one (nft), the first one unchanged.
    let second = Connections::open(&tools, None, Flavour::Nft, 2);
    let second_kernel = proc_counters::read(&second.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(second_kernel.get("cookie_valid") >= 2, "{second_kernel:?}");
    let second_label = second.topo.srv.name().to_string();
    wait_until(
        &format!("prometheus to hold the kernel's totals of {second_label}"),
        timeout,
        || prometheus_matches(&server, &second_label, &second_kernel),
    );
    let first_now = proc_counters::read(&first.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    prometheus_matches(&server, &first_label, &first_now).unwrap_or_else(|e| panic!("{e}"));
    // The initial namespace is labelled as on the line protocol.
    let init = server
        .query("synproxy_syn_received_total{netns=\"init\"}")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(init.len(), 1, "{init:?}");

    // The exposition, both formats, passes promtool's lint.
    for accept in [None, Some("application/openmetrics-text;version=1.0.0")] {
        let (status, head, body) =
            synproxy_tests::prometheus::http_get(&agent.addr, "/metrics", accept)
                .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(status, 200, "{head}");
        assert!(body.contains(&format!("netns=\"{first_label}\"")), "{body}");
        if accept.is_none() {
            promtool_check_metrics(&body);
        } else {
            assert!(body.ends_with("# EOF\n"), "{body}");
        }
    }
    dashboard_panels_show_series(&server, &agent.addr, &[first_label, second_label]);
    drop(server);
    let (code, stdout) = agent.stop();
    assert_eq!(code, Some(0));
    assert!(stdout.is_empty(), "stdout without --stdout: {stdout}");
    drop(second);
    drop(first);
}

/// Every panel and variable query of deploy/grafana's dashboard, with the
/// variables set to this agent and the two namespaces with traffic, returns
/// series with the labels its legend names (no empty panel). The eBPF panels
/// (this agent runs with `--no-ebpf`; the host kernel has no kprobes) only
/// parse and run (Prometheus answers them with an empty result).
fn dashboard_panels_show_series(
    server: &synproxy_tests::prometheus::PrometheusServer,
    agent: &str,
    namespaces: &[String],
) {
    use synproxy_tests::dashboard;
    let board = dashboard::load().unwrap_or_else(|e| panic!("{e:#}"));
    let netns = namespaces.join("|");
    let vars = [
        ("job", synproxy_tests::prometheus::JOB),
        ("instance", agent),
        ("netns", netns.as_str()),
    ];
    let expect = dashboard::Expect {
        vars: &vars,
        namespaces,
    };
    let report = wait_until(
        "every dashboard query to return its series",
        std::time::Duration::from_secs(60),
        || dashboard::check_queries(server, &board, &expect),
    );
    eprintln!("dashboard queries:\n{}", report.join("\n"));
}

fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("promtool stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

// ---- InfluxDB: a real server storing the agent's points during real traffic ----

/// InfluxDB's latest `synproxy` point of namespace `label` holds the
/// kernel's totals `kernel`, as integers, with the line's tags.
fn influx_matches(
    server: &synproxy_tests::influxdb::InfluxServer,
    db: &str,
    label: &str,
    kernel: &proc_counters::Totals,
) -> Result<(), String> {
    let query =
        format!("SELECT * FROM synproxy WHERE netns = '{label}' ORDER BY time DESC LIMIT 1");
    let series = server.query(db, &query).map_err(|e| format!("{e:#}"))?;
    let [one] = series.as_slice() else {
        return Err(format!("{query}: {} series: {series:?}", series.len()));
    };
    let [row] = one.rows.as_slice() else {
        return Err(format!("{query}: {} rows", one.rows.len()));
    };
    if row.get("netns").and_then(|v| v.as_str()) != Some(label) {
        return Err(format!("{query}: netns tag in {row:?}"));
    }
    if row
        .get("host")
        .and_then(|v| v.as_str())
        .is_none_or(str::is_empty)
    {
        return Err(format!("{query}: no host tag in {row:?}"));
    }
    for counter in Counter::ALL {
        let name = counter.name();
        let stored = row.get(name).and_then(|v| v.as_u64());
        if stored != Some(kernel.get(name)) {
            return Err(format!(
                "{query}: {name} = {stored:?}, kernel {}",
                kernel.get(name)
            ));
        }
    }
    Ok(())
}

/// Debian's `influxd` (1.6) on a loopback port receives the agent's writes
/// (`--netns all`, every 500 ms) while real connections go through SYNPROXY
/// in two server namespaces (xt, then nft): the points queried back carry
/// each namespace's kernel totals, as integers, tagged `netns` and `host`;
/// stdout stays quiet, and /metrics shows the writer's health.
#[test]
fn influxdb_server_stores_kernel_totals_per_namespace() {
    require!(NEEDS.check());
    require!(synproxy_tests::influxdb::NEEDS.check());
    let tools = Tools::default();
    let server =
        synproxy_tests::influxdb::InfluxServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    let db = "synproxy";
    server
        .execute(&format!("CREATE DATABASE {db}"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = server.url();
    let agent = MetricsAgent::start(&[
        "--netns",
        "all",
        "--interval",
        "500ms",
        "--no-ebpf",
        "--influx-url",
        &url,
        "--influx-db",
        db,
    ]);
    let timeout = std::time::Duration::from_secs(120);

    let first = Connections::open(&tools, None, Flavour::Xt, 3);
    let first_kernel = proc_counters::read(&first.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(first_kernel.get("cookie_valid") >= 3, "{first_kernel:?}");
    let first_label = first.topo.srv.name().to_string();
    wait_until(
        &format!("InfluxDB to hold the kernel's totals of {first_label}"),
        timeout,
        || influx_matches(&server, db, &first_label, &first_kernel),
    );

    let second = Connections::open(&tools, None, Flavour::Nft, 2);
    let second_kernel = proc_counters::read(&second.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(second_kernel.get("cookie_valid") >= 2, "{second_kernel:?}");
    let second_label = second.topo.srv.name().to_string();
    wait_until(
        &format!("InfluxDB to hold the kernel's totals of {second_label}"),
        timeout,
        || influx_matches(&server, db, &second_label, &second_kernel),
    );
    let first_now = proc_counters::read(&first.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    wait_until(
        &format!("InfluxDB to hold the kernel's totals of {first_label} (unchanged)"),
        timeout,
        || influx_matches(&server, db, &first_label, &first_now),
    );

    // The initial namespace is there too, labelled as on stdout.
    let init = server
        .query(
            db,
            "SELECT count(syn_received) FROM synproxy WHERE netns = 'init'",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(init.len(), 1, "{init:?}");
    // Every field an integer, as Telegraf writes them; tags host and netns.
    let fields = server
        .query(db, "SHOW FIELD KEYS FROM synproxy")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let types: std::collections::BTreeMap<String, String> = fields
        .iter()
        .flat_map(|s| &s.rows)
        .map(|row| {
            let text = |k: &str| {
                row.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            (text("fieldKey"), text("fieldType"))
        })
        .collect();
    let mut expected: Vec<&str> = STAT_COLUMNS.to_vec();
    expected.sort_unstable();
    assert_eq!(
        types.keys().map(String::as_str).collect::<Vec<_>>(),
        expected,
        "{types:?}"
    );
    assert!(types.values().all(|t| t == "integer"), "{types:?}");
    let tags = server
        .query(db, "SHOW TAG KEYS FROM synproxy")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let tag_keys: Vec<String> = tags
        .iter()
        .flat_map(|s| &s.rows)
        .filter_map(|row| row.get("tagKey").and_then(|v| v.as_str()).map(String::from))
        .collect();
    assert_eq!(tag_keys, ["host", "netns"]);

    // Both outputs on: /metrics shows the writer's health.
    let (status, _, metrics) = synproxy_tests::prometheus::http_get(&agent.addr, "/metrics", None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert!(value("synproxy_agent_influx_written_lines_total") >= 3.0);
    assert_eq!(value("synproxy_agent_influx_dropped_lines_total"), 0.0);
    assert_eq!(value("synproxy_agent_influx_rejected_lines_total"), 0.0);

    let (code, stdout) = agent.stop();
    assert_eq!(code, Some(0));
    assert!(stdout.is_empty(), "stdout without --stdout: {stdout}");
    drop(second);
    drop(first);
}

// ---- `synproxy-agent top` in a terminal, read as a person reads it ----

/// `tmux` (Debian package `tmux`).
const TMUX_NEEDS: Needs = Needs {
    what: "the top view test (apt-get install tmux; cargo xtask test installs it)",
    root: false,
    programs: &["tmux"],
    synproxy: false,
};

/// SYNs per second the top view test drives.
const TOP_SYN_RATE: f64 = 200.0;

/// Crafted SYNs into SYNPROXY at [`TOP_SYN_RATE`] on an absolute schedule
/// (a late wake-up catches up, so every second of wall time carries the rate)
/// until `stop`; returns how many were sent.
fn pace_syns(topo: &Topology, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<u64> {
    use synproxy_tests::packet::{TcpSegment, V6Checksum, SYN};
    let mut tx =
        synproxy_tests::traffic::RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
    let mut rng = synproxy_tests::rng::XorShift::from_time();
    let period = std::time::Duration::from_secs_f64(1.0 / TOP_SYN_RATE);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let due = started + period * u32::try_from(sent).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        let seg = TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN);
        tx.send(topo.srv4.into(), &seg)?;
        sent += 1;
    }
    Ok(sent)
}

/// A rate as the view prints it (`12.5`, `200`, `1.2k`, `3.4M`).
fn parse_rate(text: &str) -> Option<f64> {
    let (number, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The rate column of a counter's row in the counters panel.
fn counter_rate(screen: &str, counter: &str) -> Option<f64> {
    screen.lines().find_map(|line| {
        let mut cells = line.trim_start_matches('│').split_whitespace();
        (cells.next()? == counter).then_some(())?;
        parse_rate(cells.next()?)
    })
}

/// The view of `ns` once it shows a syn_received rate within 10% of the
/// driven rate: the rate is events over the real time between two rounds,
/// so what is left is the sender's pacing (one SYN either side of a round)
/// and when each round reads /proc relative to when the view timed it
/// (scheduling on a loaded 2-core machine: tens of ms in a 1 s window, a few
/// per cent); 10% is twice that, while a view off by a round's length (a
/// rate over 2 s, or per round instead of per second) is 50% or more off.
fn top_view_shows(screen: &str, ns: &str) -> Option<f64> {
    let syn = counter_rate(screen, "syn_received")?;
    let ok = screen.contains("1 namespace | eBPF off")
        && screen.contains(&format!("> {ns}"))
        && screen.contains(&format!(" {ns}: rates from /proc over "))
        && screen.contains("eBPF off: --no-ebpf")
        && screen.contains("no per-source counts: per-source counting needs eBPF")
        && counter_rate(screen, "cookie_valid") == Some(0.0)
        && (syn - TOP_SYN_RATE).abs() <= TOP_SYN_RATE * 0.10;
    ok.then_some(syn)
}

/// After `marker` is on the screen: the view is gone from the main screen,
/// which is back (alternate screen off, cursor shown, the typed command
/// still there) with the terminal modes `stty -g` saw before.
fn assert_terminal_restored(
    tmux: &synproxy_tests::tmux::Tmux,
    marker: &str,
    run: &str,
    status: u8,
) {
    let screen = tmux
        .wait_for(
            &format!("`{marker}` after the stty check"),
            std::time::Duration::from_secs(20),
            |s| s.lines().any(|l| l.trim() == marker).then(|| s.to_string()),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        screen.contains(&format!("{run} exited: {status}")),
        "{run}: exit status:\n{screen}"
    );
    assert!(
        screen.contains(&format!("stty -g > {run}.before")),
        "{run}: the shell's screen is not back:\n{screen}"
    );
    assert!(
        !screen.contains("synproxy-agent top |"),
        "{run}: the view is still on the screen:\n{screen}"
    );
    let mode = |f: &str| tmux.display(f).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        mode("#{alternate_on}"),
        "0",
        "{run}: still on the alternate screen"
    );
    assert_eq!(mode("#{cursor_flag}"), "1", "{run}: cursor left hidden");
    let read = |name: String| {
        std::fs::read_to_string(tmux.dir().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (before, after) = (read(format!("{run}.before")), read(format!("{run}.after")));
    assert!(!before.trim().is_empty(), "{run}: no stty output");
    assert_eq!(
        before, after,
        "{run}: terminal modes changed (raw mode left on?)"
    );
}

/// `synproxy-agent top --netns NS --no-ebpf --interval 1s` in a 120x40 tmux
/// pane while SYNs flow at a known rate into NS's SYNPROXY: the screen shows
/// the namespace, its syn_received rate, the eBPF-off line; `q`, Ctrl-C and
/// SIGTERM (three runs) each end it with exit 0 and the terminal as it was,
/// and so does a panic (exit 1; debug builds, which have a switch for it).
#[test]
fn top_view_in_tmux_shows_the_rate_and_restores_the_terminal() {
    require!(NEEDS.check());
    require!(TMUX_NEEDS.check());
    let agent = agent_binary();
    let tools = Tools::default();
    let topo = Topology::create(&tools, None).unwrap_or_else(|e| panic!("{e:#}"));
    let _rules = ServerRules::install(&tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The client kernel's RSTs to SYNPROXY's SYN/ACKs stay out of the picture.
    let _rst = synproxy_tests::rules::install_client_rst_filter(
        &tools,
        &topo.cli,
        Flavour::Xt,
        Family::Ipv4,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let ns = topo.srv.name().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let tmux = synproxy_tests::tmux::Tmux::start(120, 40).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tmux.dir().display().to_string();
    let command = |run: &str| {
        format!(
            "cd {dir} && stty -g > {run}.before; {} top --netns {ns} --no-ebpf --interval 1s; echo \"{run} exited: $?\"; stty -g > {run}.after; echo {run}-checked",
            agent.display()
        )
    };
    if std::env::var_os("SYNPROXY_AGENT_TOP_TEST_PANIC").is_some() {
        panic!("SYNPROXY_AGENT_TOP_TEST_PANIC is set in the test's environment: unset it");
    }
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| pace_syns(&topo, &stop));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let wait_view = |run: &str| {
                tmux.wait_for(
                    &format!(
                        "{run}: the view of netns {ns} with syn_received at {TOP_SYN_RATE}/s +-10% and the eBPF-off line"
                    ),
                    std::time::Duration::from_secs(60),
                    |s| top_view_shows(s, &ns).map(|rate| (rate, s.to_string())),
                )
                .unwrap_or_else(|e| panic!("{e:#}"))
            };
            // q.
            tmux.type_line(&command("run1"))
                .unwrap_or_else(|e| panic!("{e:#}"));
            let (rate, screen) = wait_view("run1");
            eprintln!(
                "top view after {:.1} s, syn_received {rate}/s:\n{screen}",
                started.elapsed().as_secs_f64()
            );
            tmux.keys("q").unwrap_or_else(|e| panic!("{e:#}"));
            assert_terminal_restored(&tmux, "run1-checked", "run1", 0);
            // Ctrl-C: a key in raw mode, not a signal.
            tmux.type_line(&command("run2"))
                .unwrap_or_else(|e| panic!("{e:#}"));
            wait_view("run2");
            tmux.keys("C-c").unwrap_or_else(|e| panic!("{e:#}"));
            assert_terminal_restored(&tmux, "run2-checked", "run2", 0);
            // SIGTERM, to the agent (the pane's shell's child).
            tmux.type_line(&command("run3"))
                .unwrap_or_else(|e| panic!("{e:#}"));
            wait_view("run3");
            tmux.signal_agent(libc::SIGTERM)
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_terminal_restored(&tmux, "run3-checked", "run3", 0);
            // A panic (debug builds have a switch for it): the hook restores
            // the terminal before the message; the agent exits 1.
            if cfg!(debug_assertions) {
                tmux.type_line(&format!(
                    "export SYNPROXY_AGENT_TOP_TEST_PANIC=1; {}; unset SYNPROXY_AGENT_TOP_TEST_PANIC",
                    command("run4")
                ))
                .unwrap_or_else(|e| panic!("{e:#}"));
                assert_terminal_restored(&tmux, "run4-checked", "run4", 1);
                let screen = tmux.screen().unwrap_or_else(|e| panic!("{e:#}"));
                assert!(
                    screen.contains("panicking on purpose"),
                    "run4: no panic message on the restored screen:\n{screen}"
                );
            }
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = sender.join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        match sent {
            Ok(Ok(n)) => eprintln!("sent {n} SYNs in {:.1} s", started.elapsed().as_secs_f64()),
            Ok(Err(e)) => panic!("SYN sender: {e:#}"),
            Err(_) => panic!("SYN sender panicked"),
        }
    });
}

//! Least privilege on the host: the agent's capability sets after start-up, in
//! each mode, against the capability table of docs/operations.md (`/proc/PID/task/*/status`), and the
//! agent as an unprivileged user (uid 65534 through `setpriv`, with only the
//! table's capabilities as ambient capabilities) reporting the same totals as
//! root with `--netns all`. Need root and setpriv (util-linux); the totals test
//! also iproute2, iptables and nft. Skipped with a message when missing, unless
//! CI=true (then they fail).
//!
//! The host kernel may have no kprobes: then eBPF is unusable and the eBPF
//! rows are checked in the VM suite (check `non-root`); here the eBPF mode is
//! checked for what the agent ended up using.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use synproxy_common::STAT_COLUMNS;
use synproxy_tests::caps::{
    self, mask, CAP_BPF, CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_PERFMON,
    CAP_SYS_ADMIN, CAP_SYS_PTRACE,
};
use synproxy_tests::child::{self, pump, stop, AgentCopy};
use synproxy_tests::connections::Connections;
use synproxy_tests::harness::{agent_binary, Needs};
use synproxy_tests::line_protocol::{self, Line};
use synproxy_tests::require;
use synproxy_tests::rules::Flavour;
use synproxy_tests::tools::Tools;
use synproxy_tests::{proc_counters, prometheus};

/// Root and `programs`: a skip elsewhere, a failure on CI.
fn needs(programs: &'static [&'static str]) -> Result<bool, String> {
    Needs {
        what: "privilege tests",
        root: true,
        programs,
        synproxy: false,
    }
    .check()
}

/// Generous: the machine may be twice as slow and busy.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// What the agent logs once it dropped what it does not need.
const DROPPED_LOG: &str = "capabilities after start-up";

/// Who starts the agent.
#[derive(Clone, Debug)]
enum As {
    Root,
    /// uid/gid 65534 via setpriv: `ambient` as inheritable and ambient
    /// capabilities, the bounding set limited to them too.
    Nobody {
        ambient: Vec<u32>,
    },
}

fn command(who: &As, copy: &AgentCopy, args: &[&str]) -> Command {
    match who {
        As::Root => {
            let mut c = Command::new(agent_binary());
            c.args(args);
            c
        }
        As::Nobody { ambient } => {
            let list = caps::setpriv_list(ambient);
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .args(["--inh-caps", &list, "--ambient-caps", &list])
                .args(["--bounding-set", &list])
                .arg(&copy.agent)
                .args(args);
            c
        }
    }
}

fn output_with_timeout(cmd: Command, what: &str) -> Output {
    child::output_with_timeout(cmd, what, AGENT_TIMEOUT)
}

fn parse_lines(stdout: &str) -> Vec<Line> {
    stdout
        .lines()
        .map(|l| line_protocol::parse_line(l).unwrap_or_else(|e| panic!("{e:#}: {l}")))
        .collect()
}

fn line_for<'a>(lines: &'a [Line], label: &str, what: &str) -> &'a Line {
    let matching: Vec<&Line> = lines
        .iter()
        .filter(|l| l.measurement == "synproxy")
        .filter(|l| l.tags.get("netns").map(String::as_str) == Some(label))
        .collect();
    assert_eq!(matching.len(), 1, "{what}: want one line for netns={label}");
    matching[0]
}

/// uid 65534 with exactly the table's `--netns all --no-ebpf` capabilities
/// (CAP_SYS_ADMIN, CAP_SYS_PTRACE as ambient capabilities) reports every
/// namespace with the same totals as root, equal to the kernel's.
#[test]
fn non_root_netns_all_reports_the_same_totals_as_root() {
    require!(needs(&["setpriv", "ip", "iptables", "ip6tables", "nft"]));
    assert!(
        Path::new("/proc/net/stat/synproxy").exists(),
        "/proc/net/stat/synproxy missing: the kernel has no SYNPROXY"
    );
    let tools = Tools::default();
    let copy = AgentCopy::new("synproxy-caps");
    let topologies = [
        (Connections::open(&tools, None, Flavour::Xt, 3), 3u64),
        (Connections::open(&tools, None, Flavour::Nft, 2), 2),
    ];
    let args = ["--once", "--no-ebpf", "--netns", "all"];
    let nobody = As::Nobody {
        ambient: vec![CAP_SYS_ADMIN, CAP_SYS_PTRACE],
    };
    let mut outputs = Vec::new();
    for who in [As::Root, nobody] {
        let what = format!("the agent ({who:?}) {}", args.join(" "));
        let out = output_with_timeout(command(&who, &copy, &args), &what);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what} failed: {stderr}");
        assert!(
            !stderr.contains("needs CAP_SYS_PTRACE") && !stderr.contains("started without"),
            "{what}: {stderr}"
        );
        outputs.push((what, parse_lines(&String::from_utf8_lossy(&out.stdout))));
    }
    let [(root_what, root), (nobody_what, nobody)] = &outputs[..] else {
        unreachable!("two runs")
    };
    let mut labels: Vec<&str> = vec!["init"];
    for (c, _) in &topologies {
        labels.push(c.topo.srv.name());
        labels.push(c.topo.cli.name());
    }
    for label in labels {
        let r = line_for(root, label, root_what);
        let n = line_for(nobody, label, nobody_what);
        for name in STAT_COLUMNS {
            assert_eq!(
                n.counter(name).ok(),
                r.counter(name).ok(),
                "netns {label} {name}: uid 65534 vs root"
            );
        }
    }
    for (c, connections) in &topologies {
        let totals = proc_counters::read(&c.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(totals.get("cookie_valid"), *connections, "{totals:?}");
        let n = line_for(nobody, c.topo.srv.name(), nobody_what);
        for name in STAT_COLUMNS {
            assert_eq!(
                n.counter(name).ok(),
                Some(totals.get(name)),
                "netns {} {name}: uid 65534 vs the kernel",
                c.topo.srv.name()
            );
        }
    }
}

/// Without CAP_SYS_PTRACE, `--netns all` cannot inspect other users'
/// processes: reported (a warning naming the capability, a failed round, so
/// `--once` exits 1), never skipped silently.
#[test]
fn netns_all_without_cap_sys_ptrace_is_reported_as_a_failure() {
    require!(needs(&["setpriv"]));
    let copy = AgentCopy::new("synproxy-caps");
    let args = ["--once", "--no-ebpf", "--netns", "all"];
    let who = As::Nobody {
        ambient: vec![CAP_SYS_ADMIN],
    };
    let what = format!("the agent ({who:?}) {}", args.join(" "));
    let out = output_with_timeout(command(&who, &copy, &args), &what);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    for want in [
        "the agent was started without CAP_SYS_PTRACE",
        "cannot inspect the network namespace of other users' processes",
        "the agent needs CAP_SYS_PTRACE for --netns all",
    ] {
        assert!(stderr.contains(want), "{what}: no {want:?} in: {stderr}");
    }
    // Its own namespace (init) is still reported.
    let lines = parse_lines(&String::from_utf8_lossy(&out.stdout));
    line_for(&lines, "init", &what);
}

/// A long-running agent, after start-up and one round.
struct Running {
    child: Child,
    stderr: Vec<String>,
    what: String,
}

impl Running {
    fn start(who: &As, copy: &AgentCopy, args: &[&str]) -> Self {
        let mut all = vec!["--interval", "1s"];
        all.extend_from_slice(args);
        let what = format!("the agent ({who:?}) {}", all.join(" "));
        let mut child = command(who, copy, &all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            panic!("{what}: pipes missing");
        };
        let (stdout, stderr_rx) = (pump(out), pump(err));
        let mut running = Running {
            child,
            stderr: Vec::new(),
            what,
        };
        // After the log line the sets are final; after a line of output a
        // round ran (its threads exist or existed).
        let deadline = Instant::now() + AGENT_TIMEOUT;
        let mut output = false;
        while !(output && running.stderr.iter().any(|l| l.contains(DROPPED_LOG))) {
            running.stderr.extend(stderr_rx.try_iter());
            output |= stdout.try_recv().is_ok();
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!(
                    "{} exited ({status}): {}",
                    running.what,
                    running.stderr.join(" | ")
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {AGENT_TIMEOUT:?} waiting for {} to log `{DROPPED_LOG}` and print a round; stderr: {}",
                running.what,
                running.stderr.join(" | ")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Keep draining stdout so the agent never blocks on it.
        std::thread::spawn(move || while stdout.recv().is_ok() {});
        running
    }

    fn logged(&self, text: &str) -> bool {
        self.stderr.iter().any(|l| l.contains(text))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A free TCP port below 1024 on loopback (binding it needs
/// CAP_NET_BIND_SERVICE, which the agent keeps only at start-up).
fn free_low_port(not: Option<u16>) -> u16 {
    (900..1000)
        .filter(|p| Some(*p) != not)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(|| panic!("no free port in 900..1000 on 127.0.0.1"))
}

/// Each mode's sets after start-up, on every thread of the running agent:
/// effective = permitted = the table's row, inheritable and ambient empty,
/// no_new_privs; bounding = the row as root (which can reduce it), and what
/// setpriv gave as uid 65534 (which cannot: no CAP_SETPCAP).
#[test]
fn capability_sets_after_start_up_match_the_table() {
    require!(needs(&["setpriv", "ip"]));
    let tools = Tools::default();
    let copy = AgentCopy::new("synproxy-caps");
    let named = synproxy_tests::netns::Netns::create(
        &tools,
        &format!(
            "spx-caps-{}-{}",
            std::process::id(),
            synproxy_tests::netns::next_seq()
        ),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let name = named.name().to_string();
    let port = free_low_port(None);
    let port2 = free_low_port(Some(port));
    let listen = format!("127.0.0.1:{port}");
    let listen2 = format!("127.0.0.1:{port2}");
    let admin = mask(&[CAP_SYS_ADMIN]);
    let netns_all = mask(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]);
    let ebpf_given = vec![CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE];
    let nobody = |ambient: &[u32]| As::Nobody {
        ambient: ambient.to_vec(),
    };
    struct Mode<'a> {
        who: As,
        args: Vec<&'a str>,
        kept: u64,
        /// None: the kept set (root reduces its bounding set itself).
        bounding: Option<u64>,
        /// eBPF requested: the row depends on whether eBPF is in use here.
        ebpf: Option<u64>,
        scrape: Option<&'a str>,
    }
    let modes = vec![
        Mode {
            who: As::Root,
            args: vec!["--no-ebpf"],
            kept: 0,
            bounding: None,
            ebpf: None,
            scrape: None,
        },
        Mode {
            who: As::Root,
            args: vec!["--no-ebpf", "--netns", &name],
            kept: admin,
            bounding: None,
            ebpf: None,
            scrape: None,
        },
        Mode {
            who: As::Root,
            args: vec!["--no-ebpf", "--netns", "all"],
            kept: netns_all,
            bounding: None,
            ebpf: None,
            scrape: None,
        },
        // Port < 1024: CAP_NET_BIND_SERVICE at start-up only.
        Mode {
            who: As::Root,
            args: vec!["--no-ebpf", "--prometheus-listen", &listen, "--stdout"],
            kept: 0,
            bounding: None,
            ebpf: None,
            scrape: Some(&listen),
        },
        // eBPF requested, as root: CAP_BPF + CAP_PERFMON if in use (uid 0
        // owns tracefs), nothing if the kernel cannot run it.
        Mode {
            who: As::Root,
            args: vec![],
            kept: 0,
            bounding: None,
            ebpf: Some(mask(&[CAP_BPF, CAP_PERFMON])),
            scrape: None,
        },
        Mode {
            who: nobody(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]),
            args: vec!["--no-ebpf", "--netns", "all"],
            kept: netns_all,
            bounding: Some(netns_all),
            ebpf: None,
            scrape: None,
        },
        // More than needed is dropped (the bounding set stays setpriv's).
        Mode {
            who: nobody(&[CAP_NET_ADMIN, CAP_DAC_OVERRIDE, CAP_SYS_ADMIN]),
            args: vec!["--no-ebpf"],
            kept: 0,
            bounding: Some(mask(&[CAP_NET_ADMIN, CAP_DAC_OVERRIDE, CAP_SYS_ADMIN])),
            ebpf: None,
            scrape: None,
        },
        Mode {
            who: nobody(&[CAP_NET_BIND_SERVICE]),
            args: vec!["--no-ebpf", "--prometheus-listen", &listen2, "--stdout"],
            kept: 0,
            bounding: Some(mask(&[CAP_NET_BIND_SERVICE])),
            ebpf: None,
            scrape: Some(&listen2),
        },
        Mode {
            who: nobody(&ebpf_given),
            args: vec![],
            kept: 0,
            bounding: Some(mask(&ebpf_given)),
            ebpf: Some(mask(&ebpf_given)),
            scrape: None,
        },
    ];
    let mut failures = Vec::new();
    for mode in modes {
        let agent = Running::start(&mode.who, &copy, &mode.args);
        let mut kept = mode.kept;
        if let Some(ebpf) = mode.ebpf {
            if agent.logged("eBPF probes attached") || agent.logged("waiting for nf_synproxy_core")
            {
                kept |= ebpf;
            } else {
                assert!(
                    agent.logged("eBPF disabled"),
                    "{}: neither attached nor disabled: {}",
                    agent.what,
                    agent.stderr.join(" | ")
                );
            }
        }
        if let Some(addr) = mode.scrape {
            let got = prometheus::http_get(addr, "/metrics", None);
            assert!(
                matches!(&got, Ok((200, _, _))),
                "{}: GET http://{addr}/metrics: {got:?}",
                agent.what
            );
        }
        let threads = caps::process_caps(agent.child.id())
            .unwrap_or_else(|e| panic!("{}: {e:#}", agent.what));
        let bounding = mode.bounding.unwrap_or(kept);
        let wrong = caps::check_threads(&threads, kept, bounding);
        println!(
            "{}: {} threads, {}",
            agent.what,
            threads.len(),
            threads[0].1.describe()
        );
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", agent.what, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

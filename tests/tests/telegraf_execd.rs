//! Telegraf's `inputs.execd` as deploy/telegraf ships it: the agent run with
//! the command of `synproxy-agent.conf`, as an unprivileged user (uid 65534,
//! as Telegraf's unit runs it as `telegraf`) holding exactly the capabilities
//! of the drop-in `telegraf.service.d.conf`, given either as ambient
//! capabilities (what the drop-in does) or as file capabilities on the binary.
//! Requests on stdin as Telegraf sends them; the answers must cover every
//! namespace (`--netns all`) with the kernel's totals, and no capability may be
//! missing. Needs root, setpriv, setcap, iproute2, iptables; skipped with a
//! message when missing, unless CI=true.
//!
//! The host kernel may have no kprobes: then eBPF is unusable here, the agent
//! says so and keeps the `--netns all` row; the drop-in's capabilities are
//! still checked against the capability table's eBPF row and the agent's own check at
//! start (it names every capability its features need and lack). The VM
//! suite's `non-root` check runs eBPF as uid 65534 with the `--netns NAME`
//! row (the `--netns all` row adds CAP_SYS_PTRACE, used for discovery here).

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use synproxy_common::STAT_COLUMNS;
use synproxy_tests::caps::{self, mask};
use synproxy_tests::child::{pump, AgentCopy};
use synproxy_tests::harness::Needs;
use synproxy_tests::line_protocol::{self, Line};
use synproxy_tests::netns::Topology;
use synproxy_tests::proc_counters;
use synproxy_tests::require;
use synproxy_tests::rules::{Family, Flavour, ServerRules, PROTECTED_PORT};
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::{self, ServerMode, TcpServer};

/// Generous: the machine may be twice as slow and busy.
const TIMEOUT: Duration = Duration::from_secs(60);
const PACKAGED_BINARY: &str = "/usr/bin/synproxy-agent";

fn deploy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/telegraf")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The execd `command = [...]` of synproxy-agent.conf: program, arguments.
fn execd_command() -> (String, Vec<String>) {
    let text = deploy("synproxy-agent.conf");
    let list = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("command = ["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("synproxy-agent.conf: no command = [...] line");
    let mut words = list
        .split(',')
        .map(|w| w.trim().trim_matches('"').to_string());
    let program = words.next().unwrap_or_default();
    (program, words.collect())
}

/// The drop-in's AmbientCapabilities=, as capability numbers.
fn dropin_caps() -> Vec<u32> {
    let text = deploy("telegraf.service.d.conf");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("telegraf.service.d.conf: no AmbientCapabilities=");
    line.split_whitespace()
        .map(|c| caps::cap_by_name(c).unwrap_or_else(|e| panic!("{e:#}")))
        .collect()
}

/// The capability table's (docs/operations.md) row for `feature`, as a mask.
fn readme_row(feature: &str) -> u64 {
    let caps: Vec<u32> = caps::readme_row(feature)
        .iter()
        .map(|c| caps::cap_by_name(c).unwrap_or_else(|e| panic!("{e:#}")))
        .collect();
    mask(&caps)
}

/// The shipped files agree: the packaged path, `--netns all` with eBPF
/// (no `--no-ebpf`), Telegraf's stdin signal, and the capability table's row for that.
#[test]
fn shipped_execd_command_and_dropin_match_the_capability_table() {
    let (program, args) = execd_command();
    assert_eq!(program, PACKAGED_BINARY);
    for want in [
        "--signal",
        "stdin",
        "--netns",
        "all",
        "--log-format",
        "telegraf",
    ] {
        assert!(args.iter().any(|a| a == want), "no {want} in {args:?}");
    }
    assert!(!args.iter().any(|a| a == "--no-ebpf"), "{args:?}");
    assert_eq!(
        mask(&dropin_caps()),
        readme_row("eBPF `--netns all`"),
        "telegraf.service.d.conf vs the capability table's eBPF --netns all row"
    );
}

/// The agent under execd: requests on stdin, lines on stdout.
struct Execd {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    log: Vec<String>,
    what: String,
}

impl Execd {
    fn start(mut command: Command, what: String) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (Some(stdin), Some(out), Some(err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            panic!("{what}: pipes missing");
        };
        Self {
            child,
            stdin: Some(stdin),
            stdout: pump(out),
            stderr: pump(err),
            log: Vec::new(),
            what,
        }
    }

    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.log.iter().any(|l| l.contains(needle)) {
            self.log.extend(self.stderr.try_iter());
            if let Ok(Some(status)) = self.child.try_wait() {
                self.log.extend(self.stderr.try_iter());
                panic!("{} exited ({status}): {}", self.what, self.log.join(" | "));
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {needle:?} within {TIMEOUT:?}: {}",
                self.what,
                self.log.join(" | ")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One request as Telegraf sends it; the round's lines for `labels`.
    fn gather(&mut self, labels: &[&str]) -> Vec<Line> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .expect("request");
        let deadline = Instant::now() + TIMEOUT;
        let mut lines: Vec<Line> = Vec::new();
        while !labels.iter().all(|want| {
            lines.iter().any(|l| {
                l.measurement == "synproxy"
                    && l.tags.get("netns").map(String::as_str) == Some(*want)
            })
        }) {
            let left = deadline.saturating_duration_since(Instant::now());
            let text = self.stdout.recv_timeout(left).unwrap_or_else(|_| {
                panic!("{}: no lines for {labels:?} within {TIMEOUT:?}", self.what)
            });
            lines
                .push(line_protocol::parse_line(&text).unwrap_or_else(|e| panic!("{e:#}: {text}")));
        }
        lines
    }

    /// Telegraf's shutdown: stdin closed; the agent must exit 0.
    fn close(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no exit after stdin EOF",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The pump ends at EOF: every line is in.
        self.log.extend(self.stderr.iter());
        assert!(
            status.success(),
            "{} exited {status}: {}",
            self.what,
            self.log.join(" | ")
        );
        self.log
    }
}

fn line_for<'a>(lines: &'a [Line], label: &str) -> &'a Line {
    lines
        .iter()
        .rev()
        .find(|l| {
            l.measurement == "synproxy" && l.tags.get("netns").map(String::as_str) == Some(label)
        })
        .unwrap_or_else(|| panic!("no synproxy line for netns={label}"))
}

/// How uid 65534 gets the drop-in's capabilities.
#[derive(Debug, Clone, Copy)]
enum Grant {
    /// Inheritable + ambient, as systemd's AmbientCapabilities= gives them.
    Ambient,
    /// `setcap CAPS+ep` on the binary, no ambient capabilities.
    FileCaps,
}

fn execd_as_nobody(grant: Grant) {
    require!(Needs {
        what: "Telegraf execd tests",
        root: true,
        programs: &["setpriv", "setcap", "ip", "iptables"],
        synproxy: true,
    }
    .check());
    let granted = dropin_caps();
    let list = caps::setpriv_list(&granted);
    let (_, args) = execd_command();
    let copy = AgentCopy::new("synproxy-execd");
    let mut command = Command::new("setpriv");
    command.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    match grant {
        Grant::Ambient => {
            command.args(["--inh-caps", &list, "--ambient-caps", &list]);
        }
        Grant::FileCaps => {
            let names: Vec<String> = granted
                .iter()
                .map(|c| format!("cap_{}", caps::names(mask(&[*c]))))
                .collect();
            let status = Command::new("setcap")
                .arg(format!("{}+ep", names.join(",")))
                .arg(&copy.agent)
                .status()
                .expect("setcap");
            assert!(status.success(), "setcap on {}", copy.agent.display());
            command.args(["--inh-caps", "-all", "--ambient-caps", "-all"]);
        }
    }
    command.arg(&copy.agent).args(&args);
    let what = format!(
        "the agent as uid 65534 ({grant:?}: {list}) {}",
        args.join(" ")
    );

    let tools = Tools::default();
    let topo = Topology::create(&tools, None).unwrap_or_else(|e| panic!("{e:#}"));
    let _rules = ServerRules::install(&tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let dst = std::net::SocketAddr::new(topo.srv4.into(), PROTECTED_PORT);
    let mut conns = vec![traffic::connect(&topo.cli, dst, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"))];
    server
        .wait_accepted(1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut agent = Execd::start(command, what.clone());
    agent.wait_log("capabilities after start-up");
    let labels = ["init", topo.srv.name(), topo.cli.name()];
    let first = agent.gather(&labels);
    // One more connection between two requests: the next answer has it.
    conns.push(
        traffic::connect(&topo.cli, dst, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}")),
    );
    server
        .wait_accepted(2, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = agent.gather(&labels);
    let pid = agent.child.id();
    let threads = caps::process_caps(pid).unwrap_or_else(|e| panic!("{e:#}"));
    let log = agent.close();

    let kernel = proc_counters::read(&topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
    let (before, after) = (
        line_for(&first, topo.srv.name()),
        line_for(&second, topo.srv.name()),
    );
    assert_eq!(
        after.counter("cookie_valid").ok(),
        before.counter("cookie_valid").ok().map(|v| v + 1),
        "{what}: the second request's round has the new connection"
    );
    for name in STAT_COLUMNS {
        assert_eq!(
            after.counter(name).ok(),
            Some(kernel.get(name)),
            "{what}: {name} vs the kernel"
        );
    }
    // Telegraf's log shape; no capability missing, nothing failed.
    for line in &log {
        assert!(
            ["I! ", "W! ", "D! "].iter().any(|p| line.starts_with(p)),
            "{what}: {line}"
        );
        assert!(
            !line.contains("started without")
                && !line.contains("needs CAP_")
                && !line.contains("cannot inspect"),
            "{what}: {line}"
        );
    }
    let ebpf_off = log.iter().any(|l| l.contains("eBPF disabled"));
    let kept = if ebpf_off {
        readme_row("`--no-ebpf --netns all`")
    } else {
        readme_row("eBPF `--netns all`")
    };
    let wrong: Vec<String> = threads
        .iter()
        .filter(|(_, t)| {
            t.effective != kept || t.permitted != kept || t.ambient != 0 || !t.no_new_privs
        })
        .map(|(name, t)| format!("{name}: {}", t.describe()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: want eff=prm={} amb=none nnp: {wrong:?}",
        caps::names(kept)
    );
    println!(
        "{what}: {} namespaces answered, kept {} (eBPF {})",
        second.len(),
        caps::names(kept),
        if ebpf_off {
            "unusable on this kernel"
        } else {
            "in use"
        }
    );
}

#[test]
fn execd_as_nobody_with_the_dropin_ambient_capabilities() {
    execd_as_nobody(Grant::Ambient);
}

#[test]
fn execd_as_nobody_with_file_capabilities() {
    execd_as_nobody(Grant::FileCaps);
}

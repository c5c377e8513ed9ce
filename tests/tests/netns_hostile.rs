//! Namespaces a hostile host or user can make, against the real agent on the
//! host kernel: names that are not text (control characters, a trailing
//! backslash, bytes that are not UTF-8) and thousands of namespaces any user
//! can create with `unshare -rn`. Need root and iproute2 (and iptables for the
//! SYNPROXY traffic); skipped with a message when missing, unless CI=true.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use synproxy_common::STAT_COLUMNS;
use synproxy_tests::harness::{agent_binary, Needs};
use synproxy_tests::line_protocol::{parse_line, Line};
use synproxy_tests::require;
use synproxy_tests::rules::{Family, Flavour, ServerRules, PROTECTED_PORT};
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::{self, ServerMode, TcpServer};
use synproxy_tests::user_netns::UserNamespaces;
use synproxy_tests::{netns::Topology, proc_counters};
use synproxy_user::sources::proc::netns_label;

const NEEDS: Needs = Needs {
    what: "hostile namespace tests",
    root: true,
    programs: &["ip", "iptables", "unshare"],
    synproxy: true,
};

/// `ip args`, which must succeed.
fn run_ip(args: &[&str]) {
    synproxy_tests::tools::run(Path::new("ip"), args).unwrap_or_else(|e| panic!("{e:#}"));
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// A temporary `--netns-dir` whose entries are bind mounts of namespaces
/// made with `ip netns add`; all unmounted and deleted on drop.
struct NetnsDir {
    dir: PathBuf,
    entries: Vec<PathBuf>,
    named: Vec<String>,
}

impl NetnsDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("spx-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self {
            dir,
            entries: Vec::new(),
            named: Vec::new(),
        }
    }

    /// A new namespace under the byte name `name`.
    fn add(&mut self, name: &[u8]) -> PathBuf {
        let real = format!("spx-hostile-{}-{}", std::process::id(), self.named.len());
        run_ip(&["netns", "add", &real]);
        self.named.push(real.clone());
        let entry = self.dir.join(OsStr::from_bytes(name));
        std::fs::File::create(&entry).unwrap_or_else(|e| panic!("{entry:?}: {e}"));
        let (src, dst) = (
            cstring(&Path::new("/run/netns").join(&real)),
            cstring(&entry),
        );
        // SAFETY: two NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind mount on {entry:?}: {}",
            std::io::Error::last_os_error()
        );
        self.entries.push(entry.clone());
        entry
    }

    fn remove(&mut self, entry: &Path) {
        let c = cstring(entry);
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_file(entry);
        self.entries.retain(|e| e != entry);
    }
}

impl Drop for NetnsDir {
    fn drop(&mut self) {
        for entry in std::mem::take(&mut self.entries) {
            self.remove(&entry);
        }
        let _ = std::fs::remove_dir(&self.dir);
        for name in &self.named {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A long-running agent in `--signal stdin` mode (one round per request),
/// its stderr in a file.
struct RoundAgent {
    agent: synproxy_tests::round_agent::RoundAgent,
    stderr: PathBuf,
}

impl RoundAgent {
    fn start(tag: &str, args: &[&OsStr]) -> Self {
        let stderr =
            std::env::temp_dir().join(format!("spx-hostile-{}-{tag}.log", std::process::id()));
        let file = std::fs::File::create(&stderr).unwrap_or_else(|e| panic!("{stderr:?}: {e}"));
        let agent = synproxy_tests::round_agent::RoundAgent::start(args, Stdio::from(file));
        Self { agent, stderr }
    }

    /// One round's lines, unparsed (all share one timestamp).
    fn round(&mut self) -> Vec<String> {
        self.agent.round()
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.agent.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Ends the agent (stdin EOF) and returns its stderr.
    fn stop(mut self) -> Vec<u8> {
        let status = self.agent.finish().unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::read(&self.stderr).unwrap_or_default();
        assert!(
            status.success(),
            "agent exited with {status}: {}",
            String::from_utf8_lossy(&log)
        );
        log
    }
}

impl Drop for RoundAgent {
    fn drop(&mut self) {
        let _ = self.agent.finish();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn netns_of(line: &Line) -> Option<&str> {
    line.tags.get("netns").map(String::as_str)
}

/// Log lines must carry no control character (the newline ends each).
fn assert_no_control_characters(log: &[u8], what: &str) {
    let text = String::from_utf8_lossy(log);
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        assert!(
            !body.chars().any(char::is_control),
            "{what}: a raw control character in the log: {line:?}"
        );
    }
}

/// Names that the old rule merged (`a_` for the first four) or skipped (not
/// UTF-8), and one that would drive a terminal: each gets its own label,
/// which is the injective encoding of its bytes, in every round; the log
/// (in each format) shows them escaped.
#[test]
fn hostile_names_get_distinct_labels_and_never_reach_the_terminal_raw() {
    require!(NEEDS.check());
    let names: [&[u8]; 7] = [
        b"a\x1b",
        b"a\n",
        b"a\\",
        b"a_",
        b"b\xff\xfe",
        b"c\x1b[2J\x1b]0;owned\x07",
        b"d\xc2\x9b31m",
    ];
    let mut dir = NetnsDir::new();
    let entries: Vec<PathBuf> = names.iter().map(|n| dir.add(n)).collect();
    let expected: Vec<String> = names.iter().map(|n| netns_label::encode(n)).collect();
    // Independently of the encoder: the documented rule on two of them.
    assert_eq!(expected[2], "a\\x5c");
    assert_eq!(expected[4], "b\\xff\\xfe");
    // Text last: it also drops one name.
    for format in ["telegraf", "json", "text"] {
        let netns_dir = dir.dir.clone().into_os_string();
        let args: Vec<OsString> = [
            "--netns",
            "all",
            "--log-level",
            "debug",
            "--log-format",
            format,
        ]
        .iter()
        .map(OsString::from)
        .chain([OsString::from("--netns-dir"), netns_dir])
        .collect();
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let mut agent = RoundAgent::start(format, &args);
        let round = agent.round();
        let lines: Vec<Line> = round
            .iter()
            .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e:#}: {l}")))
            .collect();
        let text = round.join("\n");
        for label in &expected {
            let n = lines.iter().filter(|l| netns_of(l) == Some(label)).count();
            assert_eq!(n, 1, "{format}: want one line for netns={label}:\n{text}");
        }
        // Dropping the terminal-driving name: the namespace is no longer
        // found (nothing else holds it by a name in this directory, no
        // process is in it), which is logged with its label.
        if format == "text" {
            dir.remove(&entries[5]);
        }
        let round = agent.round();
        assert!(!round.is_empty());
        let log = agent.stop();
        assert_no_control_characters(&log, format);
        let log = String::from_utf8_lossy(&log);
        if format == "text" {
            assert!(
                log.contains("netns c\\x1b[2J\\x1b]0;owned\\x07: not found this round"),
                "{log}"
            );
        }
    }
    // A path given on the command line reaches the log escaped too.
    for format in ["text", "telegraf", "json", "journald"] {
        let out = Command::new(agent_binary())
            .args(["--once", "--no-ebpf", "--log-format", format, "--proc-root"])
            .arg(OsStr::from_bytes(b"/nonexistent/\x1b[2J\x9b\n"))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(!out.stderr.is_empty());
        assert_no_control_characters(&out.stderr, format);
    }
}

/// Real connections through SYNPROXY into a fresh named server namespace.
struct Traffic {
    _conns: Vec<std::net::TcpStream>,
    _server: TcpServer,
    _rules: ServerRules,
    topo: Topology,
}

fn traffic(tools: &Tools, connections: u64) -> Traffic {
    let topo = Topology::create(tools, None).unwrap_or_else(|e| panic!("{e:#}"));
    let rules = ServerRules::install(tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let dst = std::net::SocketAddr::new(topo.srv4.into(), PROTECTED_PORT);
    let conns = (0..connections)
        .map(|_| {
            traffic::connect(&topo.cli, dst, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    server
        .wait_accepted(connections, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    Traffic {
        _conns: conns,
        _server: server,
        _rules: rules,
        topo,
    }
}

/// How many namespaces an unprivileged user makes in the test below.
const USER_NAMESPACES: usize = 3000;

/// 3,000 namespaces made by nobody (`unshare -rn`) beside two named ones
/// with SYNPROXY traffic: by default none of the 3,000 is tracked (one info
/// line says so), with `--netns-include-user-owned` at most `--netns-max` are
/// (one warning names how many were left out); the named ones are reported
/// with the kernel's totals in every round either way.
#[test]
fn thousands_of_unprivileged_namespaces_do_not_crowd_out_named_ones() {
    require!(NEEDS.check());
    let tools = Tools::default();
    let traffic = traffic(&tools, 3);
    let started = std::time::Instant::now();
    let users = UserNamespaces::create(USER_NAMESPACES, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{USER_NAMESPACES} user-owned namespaces in {:?}",
        started.elapsed()
    );
    let (srv, cli) = (traffic.topo.srv.name(), traffic.topo.cli.name());
    let check_round = |round: &[String], what: &str| -> usize {
        let lines: Vec<Line> = round
            .iter()
            .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e:#}: {l}")))
            .collect();
        let totals = proc_counters::read(&traffic.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(totals.get("cookie_valid"), 3, "{totals:?}");
        for (name, want_syn) in [(srv, totals.get("syn_received")), (cli, 0)] {
            let line = lines
                .iter()
                .find(|l| netns_of(l) == Some(name))
                .unwrap_or_else(|| panic!("{what}: no line for {name}"));
            assert_eq!(
                line.counter("syn_received").ok(),
                Some(want_syn),
                "{what}: {name}"
            );
            if name == srv {
                for column in STAT_COLUMNS {
                    assert_eq!(
                        line.counter(column).ok(),
                        Some(totals.get(column)),
                        "{what}: {column}"
                    );
                }
            }
        }
        lines.len()
    };
    let user_label = |l: &str| {
        l.strip_prefix("ns-")
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| users.inodes.contains(&i))
    };

    // Default: only namespaces owned by the initial user namespace.
    let mut agent = RoundAgent::start("default", &[OsStr::new("--netns"), OsStr::new("all")]);
    for i in 0..3 {
        let round = agent.round();
        let n = check_round(&round, "default");
        assert!(n < USER_NAMESPACES, "default, round {i}: {n} lines");
        for line in &round {
            let label = parse_line(line)
                .ok()
                .and_then(|l| l.tags.get("netns").cloned());
            assert!(
                !label.as_deref().is_some_and(user_label),
                "a user-owned namespace is reported: {line}"
            );
        }
    }
    let rss = agent.rss_kib();
    let log = String::from_utf8_lossy(&agent.stop()).into_owned();
    let notes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("owned by nested user namespaces"))
        .collect();
    assert_eq!(
        notes.len(),
        1,
        "one line about the user-owned namespaces:\n{log}"
    );
    let counted: usize = notes[0]
        .split("--netns all: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(counted >= USER_NAMESPACES, "{}", notes[0]);
    eprintln!("default: RSS {rss} KiB");

    // With them, capped.
    let max = 200;
    let max_arg = max.to_string();
    let args = [
        "--netns",
        "all",
        "--netns-include-user-owned",
        "--netns-max",
        &max_arg,
    ];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let mut agent = RoundAgent::start("capped", &args);
    for i in 0..3 {
        let round = agent.round();
        let n = check_round(&round, "capped");
        // Fewer when namespaces of other tests vanish between discovery
        // and reading.
        assert!(
            n <= max && n > max / 2,
            "capped, round {i}: {n} lines, want --netns-max ({max})"
        );
    }
    let rss_capped = agent.rss_kib();
    let log = String::from_utf8_lossy(&agent.stop()).into_owned();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("left out")).collect();
    assert_eq!(warnings.len(), 1, "one warning over 3 rounds:\n{log}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    let left: usize = warnings[0]
        .split("--netns all: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(left >= USER_NAMESPACES - max, "{}", warnings[0]);
    eprintln!("capped: RSS {rss_capped} KiB; {}", warnings[0]);
    assert!(
        rss < 256 * 1024 && rss_capped < 256 * 1024,
        "RSS {rss} / {rss_capped} KiB"
    );
    drop(users);
}

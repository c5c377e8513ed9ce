//! One run of real commands (small `sh` scripts in a temporary directory).

use super::config::HookConfig;
use super::runner::{run, Cut, Outcome, CAPTURE};
use crate::analysis::attack::{AttackEvent, AttackKind, AttackPhase, EventSource};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn event(netns: &str, phase: AttackPhase, start_ns: u64) -> AttackEvent {
    let netns = (!netns.is_empty()).then(|| netns.to_string());
    AttackEvent {
        id: AttackEvent::make_id(netns.as_deref(), AttackKind::SynFlood, Some(443), start_ns),
        netns,
        kind: AttackKind::SynFlood,
        port: Some(443),
        phase,
        start_ns,
        timestamp_ns: start_ns + 2_000_000_000,
        end_ns: (phase == AttackPhase::End).then_some(start_ns + 2_000_000_000),
        rate: 5000.4,
        baseline: 20.0,
        threshold: 100.0,
        peak_rate: 6000.0,
        events: 12_000,
        top_sources: vec![EventSource {
            source: "203.0.113.7".into(),
            events: 9000,
        }],
        top_ports: Vec::new(),
        defense: None,
    }
}

/// An executable `sh` script at DIR/NAME.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub fn hook(program: PathBuf, timeout: Duration) -> HookConfig {
    HookConfig {
        program,
        args: Vec::new(),
        timeout,
    }
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn the_hook_reads_the_json_document_and_the_variables_with_no_privilege() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let program = script(
        dir.path(),
        "hook",
        &format!(
            "cat > {d}/stdin\nenv > {d}/env\ngrep -E '^(Cap|NoNewPrivs)' /proc/self/status > {d}/status\npwd > {d}/pwd"
        ),
    );
    let ev = event("edge", AttackPhase::Start, 1_000_000_000);
    let report = run(&hook(program, LONG), &ev, &Cut::default());
    assert!(matches!(report.outcome, Outcome::Done), "{report:?}");
    let stdin = std::fs::read_to_string(dir.path().join("stdin")).unwrap();
    assert_eq!(stdin, format!("{}\n", ev.to_json()));
    let json: serde_json::Value = serde_json::from_str(&stdin).unwrap();
    assert_eq!(json["phase"], "start");
    assert_eq!(json["netns"], "edge");

    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    for want in [
        "SYNPROXY_ATTACK_PHASE=start",
        "SYNPROXY_ATTACK_ID=edge/syn_flood/443/1000000000",
        "SYNPROXY_ATTACK_NETNS=edge",
        "SYNPROXY_ATTACK_KIND=syn_flood",
        "SYNPROXY_ATTACK_PORT=443",
        "SYNPROXY_ATTACK_RATE=5000",
        "SYNPROXY_ATTACK_PEAK_RATE=6000",
        "SYNPROXY_ATTACK_EVENTS=12000",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ] {
        assert!(env.lines().any(|l| l == want), "no {want} in\n{env}");
    }
    // Nothing of the agent's environment (cargo sets CARGO_* for tests).
    assert!(
        !env.lines()
            .any(|l| l.starts_with("CARGO") || l.starts_with("HOME=")),
        "{env}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pwd")).unwrap(),
        "/\n"
    );

    // No capability in any set but the bounding one, and no_new_privs: also
    // when the tests run as root, whose exec would otherwise get them all.
    let status = std::fs::read_to_string(dir.path().join("status")).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(set))
            .unwrap_or_else(|| panic!("no {set} in {status}"));
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
}

#[test]
fn a_slow_hook_is_killed_at_its_timeout_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let program = script(
        dir.path(),
        "slow",
        &format!("sleep 30 &\necho $! > {d}/pid\nwait"),
    );
    let ev = event("edge", AttackPhase::Start, 1);
    // Long enough for sh to start and write the pid on a loaded machine.
    let config = hook(program, Duration::from_secs(1));
    let started = Instant::now();
    let report = run(&config, &ev, &Cut::default());
    assert!(matches!(report.outcome, Outcome::TimedOut), "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let line = report.line(&config, &ev);
    assert!(
        line.ends_with("(start) ran past its 1s timeout (--on-attack-timeout): killed it and its process group"),
        "{line}"
    );
    // The hook's own child went with it.
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s) if s.contains(") Z ") => break,
            Ok(_) if Instant::now() > deadline => panic!("{stat} still running"),
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn a_failing_hook_is_one_line_with_its_status_and_first_stderr_lines() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(
        dir.path(),
        "fails",
        "echo 'iptables: Permission denied (you must be root)' >&2\nprintf '\\n second\\033[31m \\n' >&2\necho third >&2\nexit 3",
    );
    let ev = event("edge", AttackPhase::End, 1);
    let config = hook(program.clone(), LONG);
    let report = run(&config, &ev, &Cut::default());
    assert!(matches!(report.outcome, Outcome::Failed(_)), "{report:?}");
    assert_eq!(
        report.line(&config, &ev),
        format!(
            "hook {} for attack edge/syn_flood/443/1 (end) failed: exit status 3; stderr: iptables: Permission denied (you must be root) | second\\u{{1b}}[31m",
            program.display()
        )
    );
}

#[test]
fn a_command_that_went_away_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "gone", "exit 0");
    let config = HookConfig::parse(&program.display().to_string(), LONG)
        .unwrap()
        .unwrap();
    std::fs::remove_file(&program).unwrap();
    let ev = event("", AttackPhase::Start, 7);
    let report = run(&config, &ev, &Cut::default());
    assert!(
        matches!(report.outcome, Outcome::CannotRun(_)),
        "{report:?}"
    );
    assert_eq!(
        report.line(&config, &ev),
        format!(
            "hook {} for attack /syn_flood/443/7 (start): cannot run: No such file or directory (os error 2)",
            program.display()
        )
    );
}

#[test]
fn a_script_whose_interpreter_is_missing_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("bad-interpreter");
    std::fs::write(&program, "#!/nonexistent/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = hook(program, LONG);
    let ev = event("", AttackPhase::Start, 7);
    let report = run(&config, &ev, &Cut::default());
    assert!(
        matches!(report.outcome, Outcome::CannotRun(_)),
        "{report:?}"
    );
    assert!(
        report.line(&config, &ev).ends_with(
            "cannot run: No such file or directory (os error 2) (the program exists: is the interpreter on its #! line missing?)"
        ),
        "{}",
        report.line(&config, &ev)
    );
}

#[test]
fn a_flood_of_output_is_drained_and_bounded_and_stdin_need_not_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(
        dir.path(),
        "flood",
        "sleep 0.2\nhead -c 20000000 /dev/zero\nhead -c 20000000 /dev/zero >&2\nexit 0",
    );
    // A document larger than a pipe's buffer, never read.
    let mut ev = event("edge", AttackPhase::Start, 1);
    ev.top_sources = (0..5000)
        .map(|i| EventSource {
            source: format!("2001:db8::{i:x}"),
            events: i,
        })
        .collect();
    assert!(ev.to_json().len() > 128 * 1024);
    let report = run(&hook(program, LONG), &ev, &Cut::default());
    assert!(matches!(report.outcome, Outcome::Done), "{report:?}");
    assert_eq!(report.stdout.bytes, 20_000_000);
    assert_eq!(report.stderr.bytes, 20_000_000);
    assert_eq!(report.stdout.head.len(), CAPTURE);
    assert_eq!(report.stderr.head.len(), CAPTURE);
}

#[test]
fn a_run_still_going_at_the_exit_deadline_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "slow", "sleep 30");
    let cut = Cut::default();
    cut.set(Instant::now() + Duration::from_millis(200));
    let ev = event("edge", AttackPhase::End, 1);
    let config = hook(program, LONG);
    let report = run(&config, &ev, &cut);
    assert!(matches!(report.outcome, Outcome::CutOff), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(20));
    assert!(report
        .line(&config, &ev)
        .contains("(end) was still running at the agent's exit after"));
}

#[test]
fn no_descriptor_of_the_agent_reaches_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A descriptor opened without O_CLOEXEC, as a careless library might.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "x").unwrap();
    let path = std::ffi::CString::new(secret.display().to_string()).unwrap();
    // SAFETY: open(2) with a valid C string; closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 3);
    let program = script(
        dir.path(),
        "fds",
        &format!("ls -l /proc/self/fd > {d}/listing"),
    );
    let report = run(
        &hook(program, LONG),
        &event("a", AttackPhase::Start, 1),
        &Cut::default(),
    );
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    assert!(matches!(report.outcome, Outcome::Done), "{report:?}");
    let fds = std::fs::read_to_string(dir.path().join("listing")).unwrap();
    assert!(!fds.contains("secret"), "{fds}");
    // stdin, stdout (the file), stderr, and ls's own directory.
    let open: Vec<&str> = fds.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(open.len(), 4, "{fds}");
}

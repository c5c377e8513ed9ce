//! `--on-attack` with the real agent on the host kernel: one spoofed SYN
//! flood into a namespace behind SYNPROXY, watched by four agents (/proc
//! only, 500 ms rounds) with four hooks. The first hook must receive the
//! start and the end as JSON on stdin, with the variables and no
//! capability (the agent runs as root); the fourth agent runs as uid 65534
//! with CAP_SYS_ADMIN, its hook as that uid with none; the second runs past its timeout at the start and fails at
//! the end, the third deletes itself at the start so the end cannot run:
//! each one clear log line. A missing hook, an out-of-range timeout and a
//! hook with detection off are start-up errors of one line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use synproxy_tests::defense_traffic::DefenseLab;
use synproxy_tests::harness::{agent_binary, wait_until, Needs};
use synproxy_tests::live_agent::{Launch, LiveAgent};
use synproxy_tests::require;
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::ServerMode;

const NEEDS: Needs = Needs {
    what: "attack hook traffic",
    root: true,
    programs: &["ip", "iptables"],
    synproxy: true,
};

/// Generous: the end comes one release time after the flood's last round.
const SETTLE: Duration = Duration::from_secs(60);

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("attack-hook-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn agent(netns: &str, hook: &Path, timeout: &str) -> LiveAgent {
    agent_as(netns, hook, timeout, &Launch::Direct)
}

fn agent_as(netns: &str, hook: &Path, timeout: &str, launch: &Launch) -> LiveAgent {
    let args: Vec<String> = [
        "--netns",
        netns,
        "--no-ebpf",
        "--interval",
        "500ms",
        "--attack-warmup",
        "1s",
        "--attack-release",
        "1s",
        "--attack-floor",
        "200",
        "--log-format",
        "telegraf",
        "--on-attack",
        &hook.display().to_string(),
        "--on-attack-timeout",
        timeout,
    ]
    .map(String::from)
    .to_vec();
    LiveAgent::spawn(&agent_binary(), &args, launch).unwrap_or_else(|e| panic!("{e:#}"))
}

fn log_has(agent: &mut LiveAgent, what: &str, pattern: &str) -> String {
    wait_until(what, SETTLE, || {
        let log = agent.stderr_lines();
        log.iter()
            .find(|l| l.contains(pattern))
            .cloned()
            .ok_or_else(|| format!("no {pattern:?} in {log:#?}"))
    })
}

#[test]
fn a_flood_runs_the_hook_at_its_start_and_end_and_its_failures_are_one_line_each() {
    require!(NEEDS.check());
    let lab = DefenseLab::new(&Tools::default(), ServerMode::Hold)
        .unwrap_or_else(|e| panic!("lab set-up: {e:#}"));
    let srv = lab.srv().name().to_string();
    let dir = Scratch::new("flood");
    let d = dir.path().display();
    let good = script(
        dir.path(),
        "good",
        &format!(
            "cat > {d}/$SYNPROXY_ATTACK_PHASE.json\nenv > {d}/$SYNPROXY_ATTACK_PHASE.env\n\
             grep -E '^(CapPrm|CapEff|NoNewPrivs)' /proc/self/status > {d}/$SYNPROXY_ATTACK_PHASE.caps"
        ),
    );
    let bad = script(
        dir.path(),
        "bad",
        "if [ \"$SYNPROXY_ATTACK_PHASE\" = start ]; then exec sleep 60; fi\n\
         echo 'ban: cannot reach the firewall service' >&2\nexit 3",
    );
    let gone = script(dir.path(), "gone", "rm -f \"$0\"");
    // The fourth agent runs as uid 65534 with CAP_SYS_ADMIN as its only
    // (ambient) capability, as setpriv or a service manager would start it.
    let nobody_dir = dir.path().join("nobody");
    std::fs::create_dir(&nobody_dir).unwrap();
    std::fs::set_permissions(&nobody_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let n = nobody_dir.display();
    let nobody_hook = script(
        dir.path(),
        "nobody-hook",
        &format!("id -u > {n}/$SYNPROXY_ATTACK_PHASE.uid\ngrep -E '^(CapPrm|CapEff|NoNewPrivs)' /proc/self/status > {n}/$SYNPROXY_ATTACK_PHASE.caps"),
    );
    let as_nobody = Launch::Caps {
        helper: PathBuf::from(env!("CARGO_BIN_EXE_synproxy-scenario")),
        caps: "sys_admin".into(),
    };
    let mut agents = [
        agent(&srv, &good, "10s"),
        agent(&srv, &bad, "500ms"),
        agent(&srv, &gone, "10s"),
        agent_as(&srv, &nobody_hook, "10s", &as_nobody),
    ];
    // The warm-up (1 s from the first round) is over after four rounds.
    for a in &mut agents {
        let mut rounds = 0;
        wait_until("four rounds of each agent", SETTLE, || {
            rounds += a
                .take_lines()
                .iter()
                .filter(|l| l.starts_with("synproxy,"))
                .count();
            if !a.running() {
                panic!("the agent exited: {:#?}", a.stderr_lines());
            }
            (rounds >= 4)
                .then_some(())
                .ok_or(format!("{rounds} rounds"))
        });
    }
    let sent = lab
        .syn_flood(2000, 3.0)
        .unwrap_or_else(|e| panic!("flood: {e:#}"));
    eprintln!("{sent} spoofed SYNs sent");

    // The good hook: both documents, the same attack, the variables, and no
    // capability although the agent runs as root and keeps CAP_SYS_ADMIN.
    let json = |phase: &str| -> serde_json::Value {
        let path = dir.path().join(format!("{phase}.json"));
        let text = wait_until(&format!("the hook's {phase} document"), SETTLE, || {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|t| t.ends_with('\n'))
                .ok_or_else(|| format!("{} not written", path.display()))
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let (start, end) = (json("start"), json("end"));
    assert_eq!(start["phase"], "start", "{start}");
    assert_eq!(end["phase"], "end", "{end}");
    assert_eq!(start["id"], end["id"]);
    assert_eq!(start["netns"], srv.as_str());
    assert_eq!(start["kind"], "syn_flood");
    assert!(start["rate"].as_f64().unwrap_or(0.0) >= 200.0, "{start}");
    assert!(end["end_ns"].as_u64().is_some(), "{end}");
    let env = std::fs::read_to_string(dir.path().join("end.env")).unwrap();
    for want in [
        "SYNPROXY_ATTACK_PHASE=end".to_string(),
        format!("SYNPROXY_ATTACK_NETNS={srv}"),
        "SYNPROXY_ATTACK_KIND=syn_flood".to_string(),
        "SYNPROXY_ATTACK_PORT=all".to_string(),
        format!("SYNPROXY_ATTACK_ID={}", end["id"].as_str().unwrap_or("")),
    ] {
        assert!(env.lines().any(|l| l == want), "no {want} in {env}");
    }
    let caps = std::fs::read_to_string(dir.path().join("start.caps")).unwrap();
    assert_eq!(
        caps,
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n"
    );

    // From the non-root agent too: its uid, no capability.
    let nobody_end = nobody_dir.join("end.caps");
    wait_until("the non-root agent's hook", SETTLE, || {
        nobody_end
            .exists()
            .then_some(())
            .ok_or(format!("no {}", nobody_end.display()))
    });
    for phase in ["start", "end"] {
        let read = |ext: &str| {
            std::fs::read_to_string(nobody_dir.join(format!("{phase}.{ext}"))).unwrap_or_default()
        };
        assert_eq!(read("uid"), "65534\n", "{phase}");
        assert_eq!(
            read("caps"),
            "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n",
            "{phase}"
        );
    }

    // The slow and failing hook: one warning each.
    let bad_agent = &mut agents[1];
    let line = log_has(bad_agent, "the slow hook's line", "ran past its");
    assert!(
        line.starts_with("W! [synproxy-agent] hook ")
            && line.ends_with("(start) ran past its 500ms timeout (--on-attack-timeout): killed it and its process group"),
        "{line}"
    );
    let line = log_has(bad_agent, "the failing hook's line", "failed:");
    assert!(
        line.ends_with(
            "(end) failed: exit status 3; stderr: ban: cannot reach the firewall service"
        ),
        "{line}"
    );
    // The hook that went away: one line at the end.
    let line = log_has(&mut agents[2], "the missing hook's line", "cannot run");
    assert!(
        line.starts_with(&format!(
            "W! [synproxy-agent] hook {} for attack ",
            gone.display()
        )) && line.ends_with("(end): cannot run: No such file or directory (os error 2)"),
        "{line}"
    );
    for (i, a) in agents.into_iter().enumerate() {
        let stopped = a
            .stop(Some(libc::SIGTERM))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(stopped.exit_code, 0, "{:#?}", stopped.stderr);
        // One line per failure, none for the good hook.
        let hook_lines = stopped
            .stderr
            .iter()
            .filter(|l| l.starts_with("W! [synproxy-agent] hook"))
            .count();
        assert_eq!(hook_lines, [0, 2, 1, 0][i], "{:#?}", stopped.stderr);
    }
}

#[test]
fn a_missing_hook_or_a_bad_timeout_is_a_start_up_error_of_one_line() {
    let dir = Scratch::new("start-up");
    let missing = dir.path().join("no-such-hook");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(agent_binary())
            .args(["--once", "--no-ebpf", "--log-format", "telegraf"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--on-attack", &format!("{} --ban", missing.display())]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "E! [synproxy-agent] --on-attack: {}: no such file\n",
            missing.display()
        )
    );
    let (code, stderr) = run(&["--on-attack", &plain.display().to_string()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not executable"), "{stderr}");
    let (code, stderr) = run(&["--on-attack", "true", "--no-attacks"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "E! [synproxy-agent] --on-attack: attack detection is off (--no-attacks), so the hook would never run\n"
    );
    let (code, stderr) = run(&["--on-attack", "true", "--on-attack-timeout", "50ms"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("\"50ms\": must be between 100ms and 1h"),
        "{stderr}"
    );
}

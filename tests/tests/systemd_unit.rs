//! The systemd unit in deploy/systemd: `systemd-analyze verify` must accept it
//! (and with its `--netns all`, remote-scrape and web-config drop-ins), its capabilities must be the documented
//! table's rows, and `systemd-analyze security --offline=true` must rate the
//! unit 2.0 or lower ("OK" or better). Needs `systemd-analyze` (Debian package
//! `systemd`): skipped with a message when missing, unless CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;
use synproxy_tests::caps::readme_row;
use synproxy_tests::harness::agent_binary;
use synproxy_tests::tools::find_program;

const UNIT: &str = "synproxy-agent.service";
const INSTALLED_PATH: &str = "/usr/local/bin/synproxy-agent";
/// The target: "OK" or better.
const MAX_EXPOSURE: f64 = 2.0;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn have_systemd_analyze() -> bool {
    if find_program(Path::new("systemd-analyze")).is_some() {
        return true;
    }
    let msg = "the systemd unit tests need `systemd-analyze` in PATH (Debian package systemd)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true, so this is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The unit (plus drop-ins, appended in order: systemd's own semantics for
/// repeated settings) written to a fresh directory, ExecStart pointing at the
/// built agent.
fn write_unit(parts: &[&str]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "synproxy-unit-{}-{}",
        std::process::id(),
        synproxy_tests::netns::next_seq()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let agent = agent_binary();
    let text: String = parts
        .iter()
        .map(|p| read(p).replace(INSTALLED_PATH, &agent.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join(UNIT);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (dir, path)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `→ Overall exposure level for synproxy-agent.service: 1.6 OK 🙂`
fn exposure(report: &str) -> Option<(f64, String)> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let rest = line.rsplit_once(": ")?.1;
    let mut parts = rest.split_whitespace();
    let score = parts.next()?.parse().ok()?;
    Some((score, parts.next().unwrap_or_default().to_string()))
}

/// Capabilities named on every `KEY=` line of `text`, in order of appearance.
fn setting_caps(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[test]
fn unit_verifies_and_its_exposure_is_ok() {
    if !have_systemd_analyze() {
        return;
    }
    let unit = read(UNIT);
    let dropin = read("netns-all.conf");
    // Capabilities: exactly the table's rows (eBPF; eBPF with --netns all).
    let ebpf = sorted(readme_row("eBPF"));
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(sorted(setting_caps(&unit, key)), ebpf, "{UNIT}: {key}");
        let merged = format!("{unit}\n{dropin}");
        assert_eq!(
            sorted(setting_caps(&merged, key)),
            sorted(readme_row("eBPF `--netns all`")),
            "{UNIT} + netns-all.conf: {key}"
        );
    }
    for (what, parts) in [
        (UNIT, vec![UNIT]),
        ("with netns-all.conf", vec![UNIT, "netns-all.conf"]),
        ("with remote-scrape.conf", vec![UNIT, "remote-scrape.conf"]),
        ("with web-config.conf", vec![UNIT, "web-config.conf"]),
    ] {
        let (dir, path) = write_unit(&parts);
        // The man page of Documentation= is installed by the package only (its
        // check runs verify with it).
        let (ok, stdout, stderr) = systemd_analyze(&["verify", "--man=no"], &path);
        assert!(
            ok && stderr.trim().is_empty(),
            "systemd-analyze verify {what}: {stdout}{stderr}"
        );
        let (_, report, stderr) = systemd_analyze(&["security", "--offline=true"], &path);
        let _ = std::fs::remove_dir_all(&dir);
        let Some((score, rating)) = exposure(&report) else {
            panic!("systemd-analyze security {what}: no exposure level in: {report}{stderr}");
        };
        println!("systemd-analyze security --offline=true {what}: exposure {score} {rating}");
        if parts.len() == 1 {
            assert!(
                score <= MAX_EXPOSURE,
                "{UNIT}: exposure {score} {rating} is above {MAX_EXPOSURE}:\n{report}"
            );
        }
    }
}

#[test]
fn exposure_line_parses() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for synproxy-agent.service: 1.6 OK 🙂\n"),
        Some((1.6, "OK".to_string()))
    );
}

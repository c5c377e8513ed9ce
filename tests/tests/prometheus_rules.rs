//! The alerting rules shipped in deploy/prometheus, unit-tested with
//! `promtool test rules` (Debian package `prometheus`). Without promtool the
//! test is skipped with a message, unless CI=true (then it fails).

use std::path::Path;
use std::process::Command;
use synproxy_tests::tools::find_program;

#[test]
fn alerting_rules_pass_promtool_unit_tests() {
    if find_program(Path::new("promtool")).is_none() {
        let msg = "promtool not in PATH (apt-get install prometheus; cargo xtask test installs it)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true, so this is a failure)");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for (args, what) in [
        (
            &["check", "rules", "synproxy-alerts.yml"][..],
            "check rules",
        ),
        (
            &["test", "rules", "synproxy-alerts.test.yml"][..],
            "test rules",
        ),
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {what} failed:\n{report}");
        assert!(report.contains("SUCCESS"), "promtool {what}:\n{report}");
    }
}

//! The mixin in deploy/mixin: the committed dashboard and alerting rules are
//! what it generates (jsonnet), every alert has its runbook, the dashboard
//! types against Grafana's published schema (`@grafana/schema` with `tsc`),
//! and its queries use the dashboard's variables. That each query returns
//! series from a real Prometheus scraping the agent is checked by
//! `prometheus_server_scrapes_kernel_totals_per_namespace` (host_kernel.rs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use synproxy_tests::harness::{skip_or_fail, Needs};
use synproxy_tests::{dashboard, grafana_schema, require};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Regenerates into a scratch directory and compares file by file: a change
/// to the mixin without regenerating (or a hand edit of a generated file)
/// fails here.
#[test]
fn committed_files_are_what_the_mixin_generates() {
    require!(Needs {
        what: "the mixin test (apt-get install jsonnet; cargo xtask test installs it)",
        programs: &["jsonnet", "jsonnetfmt"],
        ..Needs::default()
    }
    .check());
    let out_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let want = [
        "deploy/grafana/synproxy-agent.json",
        "deploy/prometheus/synproxy-alerts.yml",
    ];
    // jsonnet -m writes into existing directories only.
    for rel in want {
        let dir = out_dir.join(rel);
        let dir = dir.parent().unwrap_or(&out_dir);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let out = Command::new("jsonnet")
        .args(["-S", "-m"])
        .arg(&out_dir)
        .arg("deploy/mixin/generate.jsonnet")
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run jsonnet: {e}"));
    assert!(
        out.status.success(),
        "jsonnet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&out_dir)
                .unwrap_or(Path::new(l))
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        written.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want.into_iter().collect::<BTreeSet<_>>(),
        "generated files"
    );
    let mut stale = Vec::new();
    for rel in want {
        let fresh =
            std::fs::read_to_string(out_dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if fresh != read(rel) {
            stale.push(rel);
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what deploy/mixin generates: run `jsonnet -S -m . deploy/mixin/generate.jsonnet` at the repository root and commit the result"
    );

    // The mixin's sources are formatted as jsonnetfmt (same package) writes them.
    let sources: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/mixin"))
        .unwrap_or_else(|e| panic!("deploy/mixin: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "jsonnet" || x == "libsonnet")
        })
        .collect();
    assert!(sources.len() >= 4, "{sources:?}");
    let out = Command::new("jsonnetfmt")
        .arg("--test")
        .args(&sources)
        .output()
        .unwrap_or_else(|e| panic!("cannot run jsonnetfmt: {e}"));
    assert!(
        out.status.success(),
        "not formatted (run `jsonnetfmt -i deploy/mixin/*sonnet`): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(alert, runbook_url)` pairs of the generated rules file.
fn alerts() -> Vec<(String, String)> {
    let rules = read("deploy/prometheus/synproxy-alerts.yml");
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(name) = line.strip_prefix("alert:") {
            out.push((unquote(name), String::new()));
        } else if let (Some(url), Some(last)) = (line.strip_prefix("runbook_url:"), out.last_mut())
        {
            last.1 = unquote(url);
        }
    }
    out
}

/// Every alert has a section `## <alert>` in docs/runbooks.md with what it
/// means, how to confirm it and what to do, and its `runbook_url` points at
/// that section; no section is left for an alert that does not exist.
#[test]
fn every_alert_has_a_runbook_section() {
    let alerts = alerts();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let runbooks = read("docs/runbooks.md");
    let sections: Vec<(&str, &str)> = runbooks
        .split("\n## ")
        .skip(1)
        .map(|s| s.split_once('\n').unwrap_or((s, "")))
        .map(|(title, body)| (title.trim(), body))
        .collect();
    for (alert, url) in &alerts {
        assert_eq!(
            url,
            &format!("docs/runbooks.md#{}", alert.to_lowercase()),
            "runbook_url of {alert}"
        );
        let Some((_, body)) = sections.iter().find(|(t, _)| t == alert) else {
            panic!("docs/runbooks.md has no section `## {alert}`");
        };
        for part in ["### What it means", "### How to confirm", "### What to do"] {
            assert!(body.contains(part), "runbook of {alert} lacks `{part}`");
        }
    }
    for (title, _) in &sections {
        assert!(
            alerts.iter().any(|(a, _)| a == title),
            "docs/runbooks.md has a section for {title}, which is no alert"
        );
    }
}

/// The panels Prometheus can fill only from an agent with eBPF: the host
/// kernel test (no kprobes there) checks that their queries parse and run.
const EBPF_PANELS: &[&str] = &[
    "SYNs and invalid cookies by address family",
    "Peak rates within the interval",
    "Reconcile status",
    "Probe misses",
    "Top sources of the last round",
];

/// The variables exist, every query goes to `${datasource}` and filters on
/// `$job` and `$instance` (and per-namespace series on `$netns`), and the
/// eBPF-only panels are exactly the ones listed above.
#[test]
fn dashboard_queries_use_its_variables() {
    let board = dashboard::load().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        dashboard::variable_names(&board),
        ["datasource", "job", "instance", "netns"]
    );
    for panel in board["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    let queries = dashboard::panel_queries(&board);
    assert!(queries.len() >= 15, "{queries:?}");
    for q in &queries {
        assert!(
            q.expr.contains("job=~\"$job\"") && q.expr.contains("instance=~\"$instance\""),
            "{q:?}"
        );
        if q.legend_labels().iter().any(|l| l == "netns") {
            assert!(q.expr.contains("netns=~\"$netns\""), "{q:?}");
        }
    }
    let ebpf: BTreeSet<&str> = queries
        .iter()
        .filter(|q| q.needs_ebpf())
        .map(|q| q.panel.as_str())
        .collect();
    assert_eq!(ebpf, EBPF_PANELS.iter().copied().collect());
}

/// The dashboard JSON types against Grafana's schema (the `@grafana/schema`
/// npm package, installed by this test into the target directory).
#[test]
fn dashboard_matches_grafana_schema() {
    require!(Needs {
        what: "the Grafana schema test (apt-get install npm; cargo xtask test installs it)",
        programs: &["node", "npm"],
        ..Needs::default()
    }
    .check());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grafana-schema");
    // Offline, the packages cannot be installed: a skip, a failure on CI.
    let tsc = match grafana_schema::ensure_installed(&dir) {
        Ok(tsc) => tsc,
        Err(e) => {
            require!(skip_or_fail(&format!("{e:#}")));
            return;
        }
    };
    let board = dashboard::load().unwrap_or_else(|e| panic!("{e:#}"));
    grafana_schema::check(&dir, &tsc, "synproxy-agent", &board).unwrap_or_else(|e| panic!("{e:#}"));

    // The check is not vacuous: a value outside an enum, an unknown key and
    // a missing required key are each refused.
    let mut bad = board.clone();
    bad["panels"][1]["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "lines".into();
    let mut unknown = board.clone();
    unknown["panels"][1]["options"]["legend"]["position"] = "bottom".into();
    let mut missing = board.clone();
    if let Some(obj) = missing["templating"]["list"][1].as_object_mut() {
        obj.remove("name");
    }
    let broken = [
        ("bad-enum", &bad, "\"lines\""),
        ("unknown-key", &unknown, "position"),
        ("missing-key", &missing, "name"),
    ];
    let files: Vec<(&str, &serde_json::Value)> = broken.iter().map(|(n, b, _)| (*n, *b)).collect();
    let (ok, messages) =
        grafana_schema::compile(&dir, &tsc, &files).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!ok, "broken dashboards passed the schema check");
    for (name, _, needle) in broken {
        let prefix = format!("{name}.ts(");
        assert!(
            messages
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "{name}: no error naming {needle}:\n{messages}"
        );
    }
}

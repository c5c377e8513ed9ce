//! The package's /etc/default/synproxy-agent (deploy/debian/synproxy-agent.default)
//! against the CLI definition: every variable the agent reads is documented
//! there, with its real default, and the file names no variable the agent
//! does not read; the unit and its drop-ins read the file and set only
//! variables the agent knows.

use clap::CommandFactory;
use std::collections::BTreeMap;
use std::path::Path;
use synproxy_user::cli::Cli;

/// Variables read outside clap (credentials), and the unit's `$ARGS`.
const OTHER: &[&str] = &["INFLUX_TOKEN", "INFLUX_USERNAME", "INFLUX_PASSWORD", "ARGS"];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `VAR=value` of every line, commented (`#VAR=value`) or not.
fn documented(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_start_matches('#').split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// `Environment=VAR=value` lines of a unit or drop-in.
fn unit_environment(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Environment=")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every variable of the agent's flags, with clap's default value if any.
fn agent_variables() -> BTreeMap<String, Option<String>> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((var, default))
        })
        .collect()
}

#[test]
fn default_file_documents_every_variable_with_its_default() {
    let file = documented(&read("deploy/debian/synproxy-agent.default"));
    let unit = unit_environment(&read("deploy/systemd/synproxy-agent.service"));
    let vars = agent_variables();
    assert!(vars.len() >= 25, "{vars:?}");
    for (var, default) in &vars {
        let shown = file
            .get(var)
            .unwrap_or_else(|| panic!("{var} is not in synproxy-agent.default"));
        // The unit's own default where it sets one, else clap's.
        let expected = unit.get(var).or(default.as_ref());
        if let Some(expected) = expected {
            assert_eq!(shown, expected, "{var}: the file shows another default");
        }
    }
    for var in file.keys() {
        assert!(
            vars.contains_key(var) || OTHER.contains(&var.as_str()),
            "synproxy-agent.default names {var}, which the agent does not read"
        );
    }
}

/// The file turns the unit's endpoint off with an empty value.
#[test]
fn empty_listen_address_means_no_endpoint() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let proc = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proc.path().join("net/stat")).unwrap();
    std::fs::copy(
        fixture.join("normal_8cpu"),
        proc.path().join("net/stat/synproxy"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synproxy-agent"))
        .args(["--once", "--no-ebpf", "--proc-root"])
        .arg(proc.path())
        .env("SYNPROXY_AGENT_PROMETHEUS_LISTEN", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("synproxy,"));
}

#[test]
fn unit_reads_the_file_and_sets_only_known_variables() {
    let unit = read("deploy/systemd/synproxy-agent.service");
    for line in [
        "Documentation=man:synproxy-agent(1)",
        "EnvironmentFile=-/etc/default/synproxy-agent",
        "ExecStart=/usr/local/bin/synproxy-agent $ARGS",
        "Environment=SYNPROXY_AGENT_LOG_FORMAT=journald",
        "Environment=SYNPROXY_AGENT_PROMETHEUS_LISTEN=127.0.0.1:10816",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit: no {line:?}");
    }
    let vars = agent_variables();
    for part in [
        "deploy/systemd/synproxy-agent.service",
        "deploy/systemd/netns-all.conf",
        "deploy/systemd/remote-scrape.conf",
    ] {
        let env = unit_environment(&read(part));
        assert!(!env.is_empty(), "{part}: no Environment=");
        for var in env.keys() {
            assert!(
                vars.contains_key(var),
                "{part}: {var} is not a variable of the agent"
            );
        }
    }
}

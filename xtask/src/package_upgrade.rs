//! The package's changelog, its lintian run, and the upgrade step of `cargo
//! xtask package --check`: a second package of the same build with a higher
//! version, installed over the first after `/etc/default/synproxy-agent` was
//! edited. The edit must survive (a conffile) and the new package's binary
//! must run with the settings as systemd's `EnvironmentFile=` hands them over.

use crate::cargo::workspace_root;
use crate::package::{package_dir, DEB_NAME, INSTALLED_BINARY, UNIT_PATH};
use crate::vm::host::{describe, run_captured};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_FILE: &str = "/etc/default/synproxy-agent";
/// Appended to the default file before the upgrade: an environment variable
/// and a flag through `$ARGS`, both visible in the agent's `--once` line.
const EDIT: &str = "\n# added by the upgrade check\nSYNPROXY_AGENT_HOSTNAME=edited-before-upgrade\nARGS=\"--tag kept=across-upgrade\"\n";

/// The package version cargo-deb gives this build (`<crate version>-1`).
fn package_version() -> Result<String> {
    let manifest = workspace_root().join("synproxy-user/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .with_context(|| format!("{}: no version", manifest.display()))?;
    Ok(format!("{version}-1"))
}

/// The version of the newer package the upgrade check installs.
fn newer_version() -> Result<String> {
    Ok(format!("{}+upgradecheck1", package_version()?))
}

/// Writes `target/release/package/changelog` (cargo-deb installs it as
/// changelog.Debian.gz): deploy/debian/changelog, whose newest entry must
/// name this build's version, with an entry for `newer` on top when given.
pub fn changelog(newer: Option<&str>) -> Result<()> {
    let source = workspace_root().join("deploy/debian/changelog");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let version = package_version()?;
    let first = text.lines().next().unwrap_or_default();
    if !first.starts_with(&format!("{DEB_NAME} ({version}) ")) {
        bail!(
            "{}: the newest entry must be for {version} (the crate's version), not {first:?}",
            source.display()
        );
    }
    let text = match newer {
        Some(newer) => {
            // The newest entry's trailer line, for the same maintainer and date.
            let trailer = text
                .lines()
                .find(|l| l.starts_with(" -- "))
                .with_context(|| format!("{}: no ` -- ` line", source.display()))?;
            format!(
                "{DEB_NAME} ({newer}) unstable; urgency=medium\n\n  * Rebuild with a higher version for the package's upgrade check.\n\n{trailer}\n\n{text}"
            )
        }
        None => text,
    };
    let out = package_dir()?.join("changelog");
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))
}

/// The same build packaged again with a higher version (no compiling:
/// `cargo deb --no-build`), into `target/release/package/upgrade/`.
pub fn build_newer() -> Result<PathBuf> {
    let version = newer_version()?;
    changelog(Some(&version))?;
    let dir = package_dir()?.join("upgrade");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Command::new("cargo");
    command
        .args([
            "deb",
            "--package",
            "synproxy-user",
            "--locked",
            "--no-build",
        ])
        .args(["--deb-version", &version, "--output"])
        .arg(&dir)
        .current_dir(workspace_root());
    println!("xtask: {}", describe(&command));
    let built = run_captured(&mut command);
    // The normal changelog back for the next plain `cargo deb`.
    changelog(None)?;
    built?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb wrote no .deb into {}", dir.display()))?;
    Ok(deb)
}

/// `lintian` on the package: no error or warning (the tags the package
/// overrides are justified in its usr/share/lintian/overrides file).
pub fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .context("lintian failed to start")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "lintian {} ({}):\n{stdout}{}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tags = stdout.lines().filter(|l| !l.trim().is_empty()).count();
    println!(
        "xtask: lintian {}: clean ({tags} info/pedantic lines)",
        deb.display()
    );
    Ok(())
}

/// Variables as systemd's `EnvironmentFile=` reads them: `KEY=VALUE` lines,
/// `#` and `;` comments, one pair of surrounding quotes removed.
pub fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = [('"', '"'), ('\'', '\'')]
                .iter()
                .find_map(|(a, b)| v.strip_prefix(*a)?.strip_suffix(*b))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

fn mode(path: &str) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

fn installed_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", DEB_NAME])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The installed package's default file: a conffile, 0640, listing nothing
/// active (the unit's defaults apply); the unit reads it.
pub fn check_default_file() -> Result<()> {
    let conffiles =
        run_captured(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", DEB_NAME]))?;
    if !String::from_utf8_lossy(&conffiles.stdout).contains(DEFAULT_FILE) {
        bail!("{DEFAULT_FILE} is not a conffile of {DEB_NAME}");
    }
    if mode(DEFAULT_FILE)? != 0o640 {
        bail!(
            "{DEFAULT_FILE}: mode {:o}, expected 640",
            mode(DEFAULT_FILE)?
        );
    }
    let text = std::fs::read_to_string(DEFAULT_FILE)?;
    if !environment_file(&text).is_empty() {
        bail!("{DEFAULT_FILE} as shipped sets variables; every line should be commented");
    }
    let unit = std::fs::read_to_string(UNIT_PATH)?;
    for needed in [
        &format!("EnvironmentFile=-{DEFAULT_FILE}") as &str,
        "Documentation=man:synproxy-agent(1)",
        &format!("ExecStart={INSTALLED_BINARY} $ARGS"),
    ] {
        if !unit.lines().any(|l| l == needed) {
            bail!("{UNIT_PATH} has no line {needed:?}");
        }
    }
    println!("xtask: {DEFAULT_FILE}: conffile, mode 0640, read by the unit");
    Ok(())
}

/// Edits the default file, installs `newer` over the installed package and
/// checks that the edit survived and the new binary runs with it.
pub fn upgrade(newer: &Path, run_agent: bool) -> Result<()> {
    let before = std::fs::read_to_string(DEFAULT_FILE)?;
    let edited = format!("{before}{EDIT}");
    std::fs::write(DEFAULT_FILE, &edited)?;
    println!("xtask: edited {DEFAULT_FILE}; dpkg -i {}", newer.display());
    let newer_arg = newer.to_string_lossy().into_owned();
    // stdin closed: a conffile prompt fails instead of waiting.
    run_captured(Command::new("dpkg").args([
        &format!("--path-include={}", crate::package::MAN_PATH),
        "--install",
        &newer_arg,
    ]))?;
    let version = installed_version();
    if version != newer_version()? {
        bail!("after the upgrade dpkg reports version {version:?}");
    }
    let after = std::fs::read_to_string(DEFAULT_FILE)?;
    if after != edited || mode(DEFAULT_FILE)? != 0o640 {
        bail!(
            "{DEFAULT_FILE} after the upgrade (mode {:o}) is not the edited file:\n{after}",
            mode(DEFAULT_FILE)?
        );
    }
    if !run_agent {
        println!("SKIPPED: the upgraded agent's run (no /proc/net/stat/synproxy)");
        return Ok(());
    }
    // What systemd would start: the unit's Environment= defaults, the file's
    // variables over them, and $ARGS split at whitespace.
    let vars = environment_file(&after);
    let args: Vec<&str> = vars
        .iter()
        .filter(|(k, _)| k == "ARGS")
        .flat_map(|(_, v)| v.split_whitespace())
        .collect();
    let mut command = Command::new(INSTALLED_BINARY);
    command
        .env_clear()
        .env("SYNPROXY_AGENT_LOG_FORMAT", "journald")
        .envs(vars.iter().filter(|(k, _)| k != "ARGS").cloned())
        .env("SYNPROXY_AGENT_NO_EBPF", "true")
        .arg("--once")
        .args(&args);
    let out = run_captured(&mut command)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or_default();
    if !line.contains("host=edited-before-upgrade") || !line.contains("kept=across-upgrade") {
        bail!("the upgraded agent did not use the edited {DEFAULT_FILE}: {line:?}");
    }
    println!("xtask: upgraded to {version}, edit kept, agent ran with it: {line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_file_like_systemd() {
        let vars = environment_file(
            "# c\n; c\n\n#X=1\nA=1\n B = two words \nC=\"quoted value\"\nD='x'\nnot a pair\n",
        );
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "quoted value"),
            ("D", "x"),
        ];
        assert_eq!(
            vars,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
    }

    #[test]
    fn shipped_default_file_sets_nothing() {
        let text =
            std::fs::read_to_string(workspace_root().join("deploy/debian/synproxy-agent.default"))
                .unwrap();
        assert!(environment_file(&text).is_empty());
        assert!(!environment_file(&format!("{text}{EDIT}")).is_empty());
    }
}

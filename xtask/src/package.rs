//! `cargo xtask package`: the Debian package, built with cargo-deb from
//! `[package.metadata.deb]` in synproxy-user/Cargo.toml; `cargo xtask man`: the
//! man page alone. `cargo xtask package --check` (a step of `cargo xtask test`)
//! runs lintian on the package, installs it with `dpkg -i`, runs the installed
//! agent, reads its man page, edits `/etc/default/synproxy-agent` and upgrades
//! to a newer package (`package_upgrade`), and removes and purges it, checking
//! that nothing is left behind. The unit is never started.
//!
//! Generated at package time, into `target/release/package/` (cargo-deb reads
//! `target/release/...` assets from the real target directory):
//! - `synproxy-agent.1.gz`: the man page, from the CLI definition (clap_mangen,
//!   `synproxy-user/examples/man.rs`), gzipped with no timestamp;
//! - `synproxy-agent.service`: `deploy/systemd/`'s with the binary at
//!   `/usr/bin/synproxy-agent` (the repository's copy names `/usr/local/bin`,
//!   where a manual install puts it);
//! - `changelog`: `deploy/debian/changelog` (see `package_upgrade`).

use crate::cargo::{cargo, workspace_root};
use crate::cargo_tools::CARGO_DEB;
use crate::package_upgrade;
use crate::vm::host::{describe, run_captured, Apt};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const DEB_NAME: &str = "synproxy-agent";
pub const INSTALLED_BINARY: &str = "/usr/bin/synproxy-agent";
/// Where deploy/systemd's unit and drop-in expect a manual install.
const MANUAL_BINARY: &str = "/usr/local/bin/synproxy-agent";
pub const UNIT_PATH: &str = "/usr/lib/systemd/system/synproxy-agent.service";
/// Named by the README's install walkthrough: the dashboard to import and the
/// drop-in that gives the unit's dynamic user the web configuration's group.
const WALKTHROUGH_FILES: &[&str] = &[
    "/usr/share/synproxy-agent/grafana/synproxy-agent.json",
    "/usr/share/doc/synproxy-agent/examples/web-config.conf",
    "/usr/share/doc/synproxy-agent/examples/remote-scrape.conf",
    "/usr/share/synproxy-agent/prometheus/synproxy-alerts.yml",
];
pub const MAN_PATH: &str = "/usr/share/man/man1/synproxy-agent.1.gz";

#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Then install it on this machine (dpkg -i), run it, read its man page,
    /// and remove and purge it, checking that no file is left behind (root).
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: PackageArgs) -> Result<()> {
    let deb = build()?;
    println!("xtask: package: {}", deb.display());
    if args.check {
        check(&deb)?;
    }
    Ok(())
}

/// The target directory; cargo-deb's `systemd-units` reads the generated unit
/// from `../target/release/package` (relative to synproxy-user), so another
/// target directory is refused rather than packaging a stale unit.
fn target_dir() -> Result<PathBuf> {
    let default = workspace_root().join("target");
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = workspace_root().join(dir);
        let same = match (dir.canonicalize(), default.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => dir == default,
        };
        if !same {
            bail!(
                "cargo xtask package needs the default target directory {} (CARGO_TARGET_DIR={})",
                default.display(),
                dir.display()
            );
        }
    }
    Ok(default)
}

pub fn package_dir() -> Result<PathBuf> {
    let dir = target_dir()?.join("release/package");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `target/release/package/synproxy-agent.1` and `.1.gz`; returns the `.1`.
pub fn man() -> Result<PathBuf> {
    let dir = package_dir()?;
    let page = dir.join("synproxy-agent.1");
    let page_arg = page.to_string_lossy().into_owned();
    // The dev profile: `cargo test` has built its dependencies already.
    cargo(&[
        "run",
        "--quiet",
        "--package",
        "synproxy-user",
        "--example",
        "man",
        "--",
        &page_arg,
    ])?;
    let text = std::fs::read(&page).with_context(|| format!("reading {}", page.display()))?;
    if !text.starts_with(b".ie") && !text.starts_with(b".TH") {
        bail!("{} does not look like a man page", page.display());
    }
    let gz = dir.join("synproxy-agent.1.gz");
    // mtime 0 and no file name: the same page gives the same bytes (reproducible).
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(&text)?;
    let compressed = encoder.finish()?;
    std::fs::write(&gz, compressed).with_context(|| format!("writing {}", gz.display()))?;
    println!("xtask: man page {} ({})", page.display(), gz.display());
    Ok(page)
}

/// deploy/systemd's unit, pointing at the packaged binary (its drop-ins
/// name no path: they are packaged as they are).
fn units() -> Result<()> {
    let path = workspace_root().join("deploy/systemd/synproxy-agent.service");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if !text.contains(&format!("ExecStart={MANUAL_BINARY}")) {
        bail!(
            "{}: no `ExecStart={MANUAL_BINARY}` to point at {INSTALLED_BINARY}",
            path.display()
        );
    }
    let out = package_dir()?.join("synproxy-agent.service");
    std::fs::write(&out, text.replace(MANUAL_BINARY, INSTALLED_BINARY))
        .with_context(|| format!("writing {}", out.display()))
}

/// Builds the .deb (release build with the eBPF programs); returns its path.
pub fn build() -> Result<PathBuf> {
    crate::ebpf_toolchain::ensure()?;
    CARGO_DEB.ensure()?;
    man()?;
    units()?;
    package_upgrade::changelog(None)?;
    let mut command = Command::new("cargo");
    command
        .args(["deb", "--package", "synproxy-user", "--locked"])
        .current_dir(workspace_root())
        .stdout(Stdio::piped());
    println!("xtask: {}", describe(&command));
    let output = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .context("cargo deb failed to start")?;
    if !output.status.success() {
        bail!("cargo deb failed ({})", output.status);
    }
    // cargo-deb prints the package's path on stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {stdout}"))?;
    if !deb.is_file() {
        bail!("cargo deb reported {}, which does not exist", deb.display());
    }
    Ok(deb)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Paths in the .deb (`dpkg-deb -c`), absolute, without the root.
fn deb_paths(deb: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let out = run_captured(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let mut paths = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // drwxr-xr-x root/root 0 2026-01-01 00:00 ./usr/bin/
        let is_dir = line.starts_with('d');
        let Some(name) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = name.trim_start_matches('.').trim_end_matches('/');
        if !name.is_empty() {
            paths.push((PathBuf::from(name), is_dir));
        }
    }
    Ok(paths)
}

/// What packaging tools keep outside the package's own files: unit
/// enablement and masks. Compared before installing and after purging.
const WATCHED: &[&str] = &[
    "/etc/systemd/system",
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
    "/usr/share/doc/synproxy-agent",
    "/usr/share/synproxy-agent",
];

fn snapshot() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            out.insert(path.clone());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for dir in WATCHED {
        if Path::new(dir).exists() {
            out.insert(PathBuf::from(dir));
        }
        walk(Path::new(dir), &mut out);
    }
    out
}

fn dpkg(args: &[&str]) -> Result<String> {
    let out = run_captured(Command::new("dpkg").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn package_status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", DEB_NAME])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Installs, exercises and removes the package on this machine.
pub fn check(deb: &Path) -> Result<()> {
    if !crate::cargo::is_root() {
        bail!("the package check installs with dpkg: run it as root");
    }
    Apt::default().ensure_installed(&["man-db", "lintian"])?;
    package_upgrade::lintian(deb)?;
    // cargo-deb deletes the other packages in target/debian when it builds
    // the newer one: the checked package is copied aside first.
    let copy = package_dir()?.join("checked.deb");
    std::fs::copy(deb, &copy).with_context(|| format!("copying {}", deb.display()))?;
    let newer = package_upgrade::build_newer();
    let restored =
        std::fs::copy(&copy, deb).with_context(|| format!("restoring {}", deb.display()));
    let newer = newer?;
    restored?;
    if !package_status().is_empty() && package_status() != "un" {
        println!(
            "xtask: package check: {DEB_NAME} is installed ({}): purging it first",
            package_status()
        );
        dpkg(&["--purge", DEB_NAME])?;
    }
    let contents = deb_paths(deb)?;
    let existed: BTreeSet<PathBuf> = contents
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| exists(p))
        .collect();
    let before = snapshot();

    println!("xtask: dpkg -i {}", deb.display());
    // Container images often exclude /usr/share/man from dpkg installs
    // (path-exclude in /etc/dpkg/dpkg.cfg.d); the man page is what is checked.
    let deb_arg = deb.to_string_lossy().into_owned();
    dpkg(&[&format!("--path-include={MAN_PATH}"), "--install", &deb_arg])?;
    let installed = check_installed(&contents);
    let listed = dpkg(&["-L", DEB_NAME]);
    let upgraded = installed
        .as_ref()
        .map_err(|_| anyhow::anyhow!("not tried: the install failed"))
        .and_then(|()| {
            package_upgrade::upgrade(&newer, Path::new("/proc/net/stat/synproxy").exists())
        });
    println!("xtask: dpkg -r {DEB_NAME}");
    let removed = dpkg(&["--remove", DEB_NAME]);
    // A conffile stays until purge.
    let default_kept = exists(Path::new(package_upgrade::DEFAULT_FILE));
    let after_remove = snapshot();
    println!("xtask: dpkg -P {DEB_NAME}");
    let purged = dpkg(&["--purge", DEB_NAME]);
    installed?;
    upgraded.context("upgrade to a newer package")?;
    removed?;
    purged?;
    let listed = listed?;

    let mut problems = Vec::new();
    if !default_kept {
        problems.push(format!(
            "{} removed by dpkg -r (a conffile stays until purge)",
            package_upgrade::DEFAULT_FILE
        ));
    }
    // `dpkg -L` after install lists the .deb's contents.
    let listed: BTreeSet<PathBuf> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "/.")
        .map(PathBuf::from)
        .collect();
    for (path, _) in &contents {
        if !listed.contains(path) {
            problems.push(format!(
                "{} is in the .deb but not in dpkg -L",
                path.display()
            ));
        }
    }
    // After removal: every file of the package gone, and every directory it created.
    for path in &listed {
        if exists(path) && !existed.contains(path) {
            problems.push(format!("{} left behind after dpkg -r/-P", path.display()));
        }
    }
    // `dpkg -r` keeps, as every Debian package with a unit does (dh_installsystemd),
    // a mask of the removed unit and deb-systemd-helper's state until purge;
    // nothing else may appear.
    let kept_until_purge = |path: &Path| {
        path == Path::new("/etc/systemd/system/synproxy-agent.service")
            || (path.starts_with("/var/lib/systemd")
                && path.to_string_lossy().contains("deb-systemd-helper-")
                && path.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("synproxy-agent.service") || n.starts_with("deb-systemd-helper-")
                }))
    };
    for path in after_remove.difference(&before) {
        if !kept_until_purge(path) {
            problems.push(format!("{} appeared after dpkg -r", path.display()));
        } else {
            println!("xtask: after dpkg -r, until purge: {}", path.display());
        }
    }
    let after_purge = snapshot();
    for path in after_purge.difference(&before) {
        problems.push(format!("{} left behind after dpkg -P", path.display()));
    }
    let status = package_status();
    if !(status.is_empty() || status == "un") {
        problems.push(format!("dpkg status after purge: {status:?}"));
    }
    if !problems.is_empty() {
        bail!("package removal:\n  {}", problems.join("\n  "));
    }
    println!(
        "xtask: package check: installed {} paths, removed and purged with nothing left behind",
        listed.len()
    );
    Ok(())
}

/// The installed package: files in place, unit, agent run, man page.
fn check_installed(contents: &[(PathBuf, bool)]) -> Result<()> {
    let status = package_status();
    if status != "ii" {
        bail!("dpkg status after install: {status:?} (expected ii)");
    }
    for (path, is_dir) in contents {
        let ok = if *is_dir { path.is_dir() } else { exists(path) };
        if !ok {
            bail!(
                "{} from the .deb is not on disk after dpkg -i",
                path.display()
            );
        }
    }
    let required = [
        INSTALLED_BINARY,
        UNIT_PATH,
        MAN_PATH,
        package_upgrade::DEFAULT_FILE,
    ];
    for required in required.iter().chain(WALKTHROUGH_FILES) {
        if !contents.iter().any(|(p, _)| p == Path::new(required)) {
            bail!("the package has no {required}");
        }
    }
    package_upgrade::check_default_file()?;
    let unit =
        std::fs::read_to_string(UNIT_PATH).with_context(|| format!("reading {UNIT_PATH}"))?;
    if !unit.contains(&format!("ExecStart={INSTALLED_BINARY} ")) || unit.contains(MANUAL_BINARY) {
        bail!("{UNIT_PATH} does not start {INSTALLED_BINARY}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        run_captured(Command::new("systemd-analyze").args(["verify", UNIT_PATH]))
            .context("systemd-analyze verify of the installed unit")?;
        println!("xtask: systemd-analyze verify {UNIT_PATH}: ok");
    } else if ci() {
        bail!("systemd-analyze missing (Debian package systemd; CI=true, so this is a failure)");
    }

    // The agent needs the kernel's counters.
    let stat = Path::new("/proc/net/stat/synproxy");
    if !stat.exists() {
        println!("xtask: modprobe nf_synproxy_core");
        let loaded = run_captured(Command::new("modprobe").arg("nf_synproxy_core"));
        if let Err(e) = loaded {
            if ci() {
                return Err(e).context("/proc/net/stat/synproxy is missing and nf_synproxy_core cannot be loaded (CI=true, so this is a failure)");
            }
            println!("SKIPPED: {INSTALLED_BINARY} --once: {e:#}");
        }
    }
    if stat.exists() {
        let out = Command::new(INSTALLED_BINARY)
            .arg("--once")
            .output()
            .with_context(|| format!("{INSTALLED_BINARY} --once failed to start"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("synproxy,") || l.starts_with("synproxy "));
        let fields_ok = line.is_some_and(|l| {
            [
                "syn_received=",
                "cookie_invalid=",
                "cookie_valid=",
                "cookie_retrans=",
                "conn_reopened=",
                "entries=",
            ]
            .iter()
            .all(|f| l.contains(f))
        });
        if !out.status.success() || !fields_ok {
            bail!(
                "{INSTALLED_BINARY} --once: {}\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            );
        }
        println!(
            "xtask: {INSTALLED_BINARY} --once: {}",
            line.unwrap_or_default()
        );
    }
    let version = run_captured(Command::new(INSTALLED_BINARY).arg("--version"))?;
    println!(
        "xtask: {INSTALLED_BINARY} --version: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );

    let man = run_captured(
        Command::new("man")
            .args(["-P", "cat", DEB_NAME])
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING"),
    )
    .context("man synproxy-agent")?;
    let page = String::from_utf8_lossy(&man.stdout);
    let missing: Vec<&str> = [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "FILES",
        "--once",
        "--interval",
        "--netns",
        "--no-ebpf",
        "--prometheus-listen",
        "--log-format",
        "--tag",
    ]
    .into_iter()
    .filter(|needle| !page.contains(needle))
    .collect();
    if !missing.is_empty() || page.lines().any(|l| l.chars().count() > 80) {
        bail!("man synproxy-agent: missing {missing:?} or lines over 80 columns:\n{page}");
    }
    println!(
        "xtask: man synproxy-agent: {} lines, every option listed",
        page.lines().count()
    );
    Ok(())
}

//! The container image and the Kubernetes manifests under test: podman with
//! its own storage under target/ (the image loaded from the OCI archive
//! `cargo xtask image` writes), the schema validator `kubernetes-validate`
//! installed with pip into a venv under target/, and the manifests read as
//! JSON (through the venv's PyYAML, a dependency of the validator).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Exact version: the check must not change under the test's feet.
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The workspace root (this crate is one level below it).
pub fn workspace() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// target/container, where `cargo xtask image` leaves the archive.
pub fn image_dir() -> PathBuf {
    workspace().join("target/container")
}

/// The archive `cargo xtask image` writes.
pub fn image_archive() -> PathBuf {
    image_dir().join("synproxy-agent.oci.tar")
}

/// Runs `command`; fails with its stderr unless it exits 0.
pub fn run_ok(command: &mut Command) -> Result<Output> {
    let what = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Debian's python3 (its `venv` module is the `python3-venv` package), else
/// the first in PATH.
fn python3() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// The venv with the validator; created (once per process: tests run in
/// threads) unless it already holds the pinned version.
pub fn validator_venv() -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = image_dir().join("kubernetes-validate-venv");
    let stamp = venv.join("installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBERNETES_VALIDATE) {
        return Ok(venv);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run_ok(Command::new(python3()).args(["-m", "venv"]).arg(&venv))
        .context("creating a venv (apt-get install python3-venv; cargo xtask test installs it)")?;
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )
    .context("installing the schema validator from PyPI")?;
    std::fs::write(&stamp, KUBERNETES_VALIDATE)
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}

/// Every document of a YAML file, as JSON.
pub fn yaml_documents(venv: &Path, file: &Path) -> Result<Vec<Value>> {
    let script = "import json, sys, yaml\n\
        print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let out = run_ok(
        Command::new(venv.join("bin/python"))
            .args(["-c", script])
            .arg(file),
    )?;
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading {} as JSON", file.display()))?;
    Ok(docs)
}

/// The document of `kind` in `docs`.
pub fn document<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} in the manifest"))
}

/// A list of strings at `pointer` (empty when absent).
pub fn strings(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// podman with storage of its own in `dir` (vfs: needs no fuse or overlay
/// support) and runc (crun cannot run on hosts with hybrid cgroups).
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Fresh storage in `dir`, removed again on drop.
    pub fn new(dir: PathBuf) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"]);
        command
    }

    /// `podman <args>`, failing unless it exits 0; its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = run_ok(self.command().args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their state lives in the run root), then the files.
        if let Err(e) = self.run(&["rm", "--all", "--force", "--time", "5"]) {
            eprintln!("# warning: removing the test's containers: {e:#}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("# warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// The value of each `name{netns="LABEL"} VALUE` line of a text exposition.
pub fn metric_by_netns(text: &str, name: &str, netns: &str) -> Option<u64> {
    let prefix = format!("{name}{{");
    let label = format!("netns=\"{netns}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            l.split_once('}')
                .is_some_and(|(labels, _)| labels.contains(&label))
        })
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
}

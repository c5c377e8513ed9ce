//! Host tooling: commands with readable errors, and the Debian packages the VM test needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Packages the VM test uses on the host: QEMU, a static busybox for the guest, depmod,
/// the tools copied into the guest, xz and zstd for decompressing .ko.xz/.ko.zst modules.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "iptables",
    "nftables",
    "iproute2",
    // The live view's check runs `synproxy-agent top` in tmux in the guest: tmux, its
    // terminfo entries (ncurses-base) and the C.UTF-8 locale tmux needs (libc-bin).
    "tmux",
    "ncurses-base",
    "libc-bin",
    "xz-utils",
    "zstd",
    // Signs the private bullseye/bookworm/sid apt sources used for kernels.
    "debian-archive-keyring",
];

/// Runs `command`, returns its output, fails with a one-line error naming the command.
pub fn run_captured(command: &mut Command) -> Result<Output> {
    let description = describe(command);
    let output = command
        .output()
        .with_context(|| format!("{description} failed to start"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{description} failed ({}): {last_line}", output.status);
    }
    Ok(output)
}

/// Runs `command` with inherited stdout/stderr.
pub fn run_inherited(command: &mut Command) -> Result<()> {
    let description = describe(command);
    let status = command
        .status()
        .with_context(|| format!("{description} failed to start"))?;
    if !status.success() {
        bail!("{description} failed ({status})");
    }
    Ok(())
}

pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// apt access. `apt-get update` runs at most once per process for the system sources.
#[derive(Debug, Default)]
pub struct Apt {
    system_updated: bool,
}

impl Apt {
    pub fn update_system_once(&mut self) -> Result<()> {
        if !self.system_updated {
            println!("vm-test: apt-get update");
            run_captured(Command::new("apt-get").args(["update", "-q"]))?;
            self.system_updated = true;
        }
        Ok(())
    }

    pub fn is_installed(package: &str) -> bool {
        Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Status}", package])
            .output()
            .map(|out| out.status.success() && out.stdout == b"installed")
            .unwrap_or(false)
    }

    /// Installs whatever of `packages` is missing (apt-get update first, once).
    pub fn ensure_installed(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !Self::is_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.update_system_once()?;
        println!("vm-test: apt-get install -y {}", missing.join(" "));
        run_captured(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&missing),
        )?;
        Ok(())
    }
}

/// A private apt state (own sources list and package lists, no installed packages),
/// used to download packages from a Debian suite the machine's sources do not carry.
#[derive(Debug, Clone)]
pub struct PrivateAptSource {
    pub name: &'static str,
    /// `sources.list` lines, e.g. `deb http://deb.debian.org/debian bullseye main`.
    pub lines: &'static [&'static str],
}

impl PrivateAptSource {
    pub fn root(&self, vm_dir: &Path) -> PathBuf {
        vm_dir.join("apt").join(self.name)
    }

    pub fn options(&self, vm_dir: &Path) -> Vec<String> {
        let root = self.root(vm_dir);
        vec![
            format!(
                "-oDir::Etc::SourceList={}",
                root.join("sources.list").display()
            ),
            "-oDir::Etc::SourceParts=/dev/null".to_string(),
            format!("-oDir::State::Lists={}", root.join("lists").display()),
            format!("-oDir::Cache={}", root.join("cache").display()),
            format!("-oDir::State::status={}", root.join("status").display()),
        ]
    }

    /// Writes the sources list and runs `apt-get update` on the private state when its
    /// lists are missing or older than a day.
    pub fn refresh(&self, vm_dir: &Path) -> Result<()> {
        let root = self.root(vm_dir);
        for dir in [
            root.join("lists/partial"),
            root.join("cache/archives/partial"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources: String = self
            .lines
            .iter()
            .map(|line| line.replacen("deb ", &format!("deb [signed-by={keyring}] "), 1) + "\n")
            .collect();
        let sources_path = root.join("sources.list");
        let previous = std::fs::read_to_string(&sources_path).unwrap_or_default();
        std::fs::write(&sources_path, &sources)
            .with_context(|| format!("writing {}", sources_path.display()))?;
        let status_path = root.join("status");
        if !status_path.exists() {
            std::fs::write(&status_path, "")
                .with_context(|| format!("writing {}", status_path.display()))?;
        }
        let stamp = root.join("updated.stamp");
        let fresh = previous == sources
            && std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() < 24 * 3600);
        if !fresh {
            println!("vm-test: apt-get update ({} sources)", self.name);
            run_captured(
                Command::new("apt-get")
                    .args(self.options(vm_dir))
                    .args(["update", "-q"]),
            )?;
            std::fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))?;
        }
        Ok(())
    }
}

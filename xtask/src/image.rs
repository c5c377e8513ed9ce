//! `cargo xtask image`: the container image, `FROM scratch` with the static
//! agent the VM suite builds (glibc, crt-static), built with podman into a
//! storage directory under target/ and saved as an OCI archive there, so no
//! image registry and no state of the host's own container storage is used.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cargo::workspace_root;
use crate::vm::host::{run_captured, run_inherited};

/// Where the image's build context, podman storage and archive live.
pub const IMAGE_DIR: &str = "target/container";
/// The archive the host test loads (`tests/tests/container.rs`).
pub const ARCHIVE: &str = "synproxy-agent.oci.tar";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const NAME: &str = "localhost/synproxy-agent";

#[derive(Debug, clap::Args)]
pub struct ImageArgs {}

pub fn run(_args: ImageArgs) -> Result<()> {
    let archive = build()?;
    println!("image: {}", archive.display());
    println!("load it with: podman load -i {}", archive.display());
    Ok(())
}

/// podman with this project's own storage under `dir` (vfs: works as root
/// on any filesystem, no fuse-overlayfs needed).
pub fn podman(dir: &Path) -> Command {
    let mut command = Command::new("podman");
    command
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"]);
    command
}

/// Builds the static agent and the image; returns the OCI archive's path.
pub fn build() -> Result<PathBuf> {
    let workspace = workspace_root();
    let binaries = crate::vm::build_guest_binaries(&workspace)?;
    let dir = workspace.join(IMAGE_DIR);
    let context = dir.join("context");
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    ensure_static(&binaries.agent)?;
    let binary = context.join("synproxy-agent");
    std::fs::copy(&binaries.agent, &binary).with_context(|| {
        format!(
            "copying {} to {}",
            binaries.agent.display(),
            binary.display()
        )
    })?;
    let version = agent_version(&binary)?;
    let tag = format!("{NAME}:{version}");
    println!(
        "image: podman build {tag} ({})",
        dir.join("storage").display()
    );
    run_inherited(
        podman(&dir)
            .args(["build", "--quiet", "--pull=never", "--file"])
            .arg(workspace.join(CONTAINERFILE))
            .args(["--build-arg", &format!("VERSION={version}")])
            .args(["--tag", &tag])
            .arg(&context),
    )?;
    let archive = dir.join(ARCHIVE);
    if archive.exists() {
        std::fs::remove_file(&archive)
            .with_context(|| format!("removing the old {}", archive.display()))?;
    }
    run_inherited(
        podman(&dir)
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&tag),
    )?;
    if !archive.is_file() {
        bail!("podman save succeeded but {} is missing", archive.display());
    }
    Ok(archive)
}

/// The version the binary reports (`synproxy-agent 0.1.0`): the image's tag.
fn agent_version(binary: &Path) -> Result<String> {
    let output = run_captured(Command::new(binary).arg("--version"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["synproxy-agent", version] => Ok((*version).to_string()),
        _ => bail!(
            "unexpected `{} --version` output: {stdout:?}",
            binary.display()
        ),
    }
}

/// An image `FROM scratch` has no dynamic loader: the binary must not ask for
/// one (no `PT_INTERP` program header in the 64-bit little-endian ELF).
fn ensure_static(binary: &Path) -> Result<()> {
    let elf = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf
            .get(at..at + len)
            .with_context(|| format!("{} is truncated", binary.display()))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |value, byte| value << 8 | u64::from(*byte)))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!(
            "{} is not a 64-bit little-endian ELF file",
            binary.display()
        );
    }
    let (phoff, phentsize, phnum) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for index in 0..phnum {
        let at = usize::try_from(phoff + index * phentsize)?;
        const PT_INTERP: u64 = 3;
        if field(at, 4)? == PT_INTERP {
            bail!(
                "{} is dynamically linked (it names a program interpreter): the image has no libc",
                binary.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_non_elf_binaries_are_refused() {
        // This test program is linked dynamically (cargo's default).
        let exe = std::env::current_exe().expect("current_exe");
        let error = ensure_static(&exe).expect_err("a dynamic binary passed");
        assert!(error.to_string().contains("dynamically linked"), "{error}");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let error = ensure_static(&manifest).expect_err("a text file passed");
        assert!(error.to_string().contains("not a 64-bit"), "{error}");
    }
}

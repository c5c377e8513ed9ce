//! Cargo subcommands the xtask installs when missing, like the eBPF toolchain
//! (`ebpf_toolchain.rs`): pinned versions, `cargo install --locked`.

use crate::vm::host::run_inherited;
use anyhow::{bail, Result};
use std::process::Command;

/// `cargo deb` (`cargo xtask package`).
pub const CARGO_DEB: CargoTool = CargoTool {
    krate: "cargo-deb",
    version: "3.8.0",
    // `cargo-deb --version` prints `3.8.0`.
    version_args: &["--version"],
};

/// `cargo fuzz` (`cargo xtask fuzz`); the fuzz targets build with the nightly.
pub const CARGO_FUZZ: CargoTool = CargoTool {
    krate: "cargo-fuzz",
    version: "0.13.2",
    // `cargo-fuzz --version` prints `cargo-fuzz 0.13.2`.
    version_args: &["--version"],
};

pub struct CargoTool {
    pub krate: &'static str,
    pub version: &'static str,
    version_args: &'static [&'static str],
}

impl CargoTool {
    fn installed(&self) -> bool {
        Command::new(self.krate)
            .args(self.version_args)
            .output()
            .map(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .any(|word| word == self.version)
            })
            .unwrap_or(false)
    }

    /// Installs the pinned version when it is missing (or another version is).
    pub fn ensure(&self) -> Result<()> {
        if self.installed() {
            return Ok(());
        }
        let (krate, version) = (self.krate, self.version);
        println!("xtask: cargo install {krate} --version {version} --locked (1-3 min)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run_inherited(Command::new(cargo).args([
            "install",
            krate,
            "--version",
            version,
            "--locked",
            "--force",
        ]))?;
        if !self.installed() {
            bail!("{krate} {version} was installed but `{krate} --version` does not report it (is ~/.cargo/bin in PATH?)");
        }
        Ok(())
    }
}

//! The VM guest's late modules: `nf_synproxy_core` and its dependants, listed
//! in load order (one `.ko` path a line) in `/etc/vmtest/modules-late` by the
//! initramfs. The module checks unload and load them with the guest's own
//! `rmmod`/`insmod`, as the guest's init does with the early ones; a load adds
//! the new modules to the clean-state baseline, as init's loads do.

use crate::clean_state;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The list the initramfs writes.
pub const LATE_LIST: &str = "/etc/vmtest/modules-late";
/// The module whose reference count the checks read.
pub const SYNPROXY_CORE: &str = "nf_synproxy_core";

/// Modules in load order.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleList {
    files: Vec<PathBuf>,
}

/// What one unload of the whole list did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unload {
    /// Modules whose `rmmod` failed, in the order tried.
    pub failed: Vec<String>,
    /// rmmod's error output, every line.
    pub stderr: Vec<String>,
}

impl Unload {
    /// The failed names joined by `,` (the RESULT lines' form), or `default`.
    pub fn failed_or(&self, default: &str) -> String {
        if self.failed.is_empty() {
            default.to_string()
        } else {
            self.failed.join(",")
        }
    }
}

/// `/lib/modules/x/nf-synproxy-core.ko` -> `nf_synproxy_core` (the name rmmod
/// and /sys/module use).
pub fn module_name(file: &Path) -> String {
    let base = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.strip_suffix(".ko").unwrap_or(&base).replace('-', "_")
}

/// Whether module `name` is loaded.
pub fn loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// The module's reference count, or None when it is not loaded.
pub fn refcnt(name: &str) -> Option<i64> {
    std::fs::read_to_string(Path::new("/sys/module").join(name).join("refcnt"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

impl ModuleList {
    pub fn parse(text: &str) -> ModuleList {
        ModuleList {
            files: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect(),
        }
    }

    pub fn read(path: &str) -> Result<ModuleList> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Ok(Self::parse(&text))
    }

    /// The late modules of the guest.
    pub fn late() -> Result<ModuleList> {
        Self::read(LATE_LIST)
    }

    /// Names in unload order: dependants first.
    pub fn unload_order(&self) -> Vec<String> {
        self.files.iter().rev().map(|f| module_name(f)).collect()
    }

    /// `insmod` of each file in order, then the new modules added to the
    /// clean-state baseline (when `SPX_CLEAN_STATE` names one). Prints, as the
    /// guest's init does for its loads, a failing `RESULT ... check=module-load
    /// module=NAME` line with insmod's error under it per module that did not
    /// load, and the baseline's note.
    pub fn load(&self, kernel: &str) -> Result<()> {
        for line in self.load_lines(kernel)? {
            println!("{line}");
        }
        Ok(())
    }

    fn load_lines(&self, kernel: &str) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for file in &self.files {
            let out = Command::new("insmod")
                .arg(file)
                .output()
                .with_context(|| format!("cannot run insmod {}", file.display()))?;
            if !out.status.success() {
                let name = file
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = name.strip_suffix(".ko").unwrap_or(&name);
                lines.push(format!(
                    "RESULT kernel={kernel} check=module-load module={name} status=FAIL"
                ));
                lines.extend(stderr_lines(&out).iter().map(|l| format!("# insmod: {l}")));
            }
        }
        if let Some(file) = std::env::var_os(clean_state::ENV).filter(|f| !f.is_empty()) {
            let note = clean_state::record(Path::new(&file))?;
            lines.push(format!("# clean-state {note}"));
        }
        Ok(lines)
    }

    /// `rmmod` of every loaded module of the list, dependants first.
    pub fn unload(&self) -> Result<Unload> {
        let mut unload = Unload::default();
        for name in self.unload_order() {
            if !loaded(&name) {
                continue;
            }
            let out = Command::new("rmmod")
                .arg(&name)
                .output()
                .with_context(|| format!("cannot run rmmod {name}"))?;
            if !out.status.success() {
                unload.failed.push(name);
                unload.stderr.extend(stderr_lines(&out));
            }
        }
        Ok(unload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rmmod_and_unload_goes_backwards() {
        let list = ModuleList::parse(
            "/lib/modules/vmtest/nf_synproxy_core.ko\n\n/lib/modules/vmtest/ipt_SYNPROXY.ko\n/lib/modules/vmtest/nft-synproxy.ko\n",
        );
        assert_eq!(
            list.unload_order(),
            ["nft_synproxy", "ipt_SYNPROXY", "nf_synproxy_core"]
        );
        assert_eq!(module_name(Path::new("x")), "x");
    }

    #[test]
    fn failed_names_are_joined_or_defaulted() {
        let mut u = Unload::default();
        assert_eq!(u.failed_or("ok"), "ok");
        u.failed = vec!["ipt_SYNPROXY".into(), "nf_synproxy_core".into()];
        assert_eq!(u.failed_or("ok"), "ipt_SYNPROXY,nf_synproxy_core");
    }
}

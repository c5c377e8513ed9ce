//! fentry/fexit: whether they can be used here, finding each function's BTF
//! object (vmlinux or the module's), loading and attaching the programs, and
//! unloading them so that nothing holds the modules.

use super::btf::{self, SplitBase, VMLINUX_BTF};
use super::error::{first_errno, is_permission, load_error, EbpfError, CAPS};
use super::kernel_btf;
use super::kprobe_attach::symbol_exists;
use super::probes::MODULES;
use super::{AttachError, Attachment, EbpfSource, ProbeType, Stop, FENTRY_PROBES};
use aya::programs::{FEntry, FExit};
use log::warn;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Linux version of the running kernel, (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain bytes: all zeroes is valid; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: String = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Where the fentry programs' functions are, as far as known at start.
#[derive(Clone, Debug)]
pub(super) struct FentryTargets {
    /// vmlinux's type count: a module's split BTF ids continue after it.
    vmlinux_types: u32,
    /// Ids in vmlinux of functions built into the kernel (no module BTF needed).
    builtin: [Option<u32>; FENTRY_PROBES.len()],
}

/// Whether fentry can be used here, as far as can be told before the
/// modules load: Err is the reason to use kprobes instead.
pub(super) fn fentry_precheck(vmlinux: &[u8]) -> Result<FentryTargets, EbpfError> {
    let names = FENTRY_PROBES.map(|p| p.function);
    let ids = btf::func_ids(vmlinux, None, &names).map_err(EbpfError::BtfInvalid)?;
    let vmlinux_types = btf::type_count(vmlinux).map_err(EbpfError::BtfInvalid)?;
    let mut builtin = [None; FENTRY_PROBES.len()];
    builtin.copy_from_slice(&ids);
    let targets = FentryTargets {
        vmlinux_types,
        builtin,
    };
    if targets.builtin.iter().all(Option::is_some) {
        return Ok(targets);
    }
    // Some functions are in modules: that needs module BTF and 5.11.
    if let Some((major, minor)) = kernel_version() {
        if (major, minor) < (5, 11) {
            return Err(EbpfError::FentryNeedsNewerKernel { major, minor });
        }
    }
    if let Some(reason) = no_module_btf() {
        return Err(reason);
    }
    Ok(targets)
}

/// A reason if loaded modules show that the kernel has no module BTF.
fn no_module_btf() -> Option<EbpfError> {
    let loaded: Vec<String> = std::fs::read_to_string("/proc/modules")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for m in MODULES {
        if loaded.iter().any(|l| l == m) && !Path::new("/sys/kernel/btf").join(m).exists() {
            return Some(EbpfError::NoBtfForModule(m));
        }
    }
    if !loaded.is_empty()
        && !loaded
            .iter()
            .any(|m| Path::new("/sys/kernel/btf").join(m).exists())
    {
        return Some(EbpfError::NoModuleBtf);
    }
    None
}

impl EbpfSource {
    /// Loads every fentry/fexit program against the BTF object that holds
    /// its function (vmlinux, or the module's, found again at each attach so
    /// that a reloaded module's new BTF is used) and attaches it.
    pub(super) fn attach_fentry(
        &mut self,
        modules: &[Option<u64>],
        stop: &Stop,
    ) -> Result<String, AttachError> {
        let Some(targets) = self.fentry_targets.clone() else {
            return Err(AttachError::FentryUnusable("no fentry targets".into()));
        };
        let resolved = resolve_fentry_targets(&targets)?;
        let result = (|| {
            for (spec, (id, obj)) in FENTRY_PROBES.iter().zip(&resolved) {
                if stop.requested() {
                    return Err(AttachError::Stopped);
                }
                let fd = match obj {
                    Some((_, _, fd)) => Some(fd.try_clone().map_err(|e| {
                        AttachError::Other(format!("duplicating a BTF descriptor: {e}"))
                    })?),
                    None => None,
                };
                let program = self.ebpf.program_mut(spec.program).ok_or_else(|| {
                    AttachError::Other(format!("program {} missing", spec.program))
                })?;
                let loaded = if spec.exit {
                    let p: &mut FExit = program
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                    p.load_with_btf_obj(*id, fd)
                        .and_then(|()| p.attach().map(drop))
                } else {
                    let p: &mut FEntry = program
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                    p.load_with_btf_obj(*id, fd)
                        .and_then(|()| p.attach().map(drop))
                };
                if let Err(e) = loaded {
                    let reason = if is_permission(&e) {
                        // Also as root where a kernel does not allow fentry.
                        format!(
                            "the kernel refused {} ({}; loading needs CAP_BPF and CAP_PERFMON)",
                            spec.program,
                            first_errno(&e).map_or_else(
                                || e.to_string(),
                                |n| std::io::Error::from_raw_os_error(n).to_string()
                            )
                        )
                    } else {
                        load_error(spec.program, e).to_string()
                    };
                    return Err(AttachError::FentryUnusable(format!(
                        "{} on {}: {reason}",
                        if spec.exit { "fexit" } else { "fentry" },
                        spec.function
                    )));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.unload_fentry();
            return Err(e);
        }
        self.generation += 1;
        self.last_missed = 0;
        // Freshly loaded programs: their recursion_misses start at 0 again.
        self.last_recursion = 0;
        self.attached = Some(Attachment {
            generation: self.generation,
            modules: modules.to_vec(),
            events: Vec::new(),
            kind: ProbeType::Fentry,
        });
        let mut objects: Vec<String> = Vec::new();
        for (_, obj) in &resolved {
            let name = match obj {
                Some((module, id, _)) => format!("{module} (BTF id {id})"),
                None => "vmlinux".to_string(),
            };
            if !objects.contains(&name) {
                objects.push(name);
            }
        }
        Ok(format!(
            "{} fentry/fexit programs on the SYNPROXY paths, loaded against the BTF of {}",
            FENTRY_PROBES.len(),
            objects.join(" and ")
        ))
    }

    /// Unloads every fentry/fexit program (links and program descriptors):
    /// nothing of them holds a module any more.
    pub(super) fn unload_fentry(&mut self) {
        for spec in FENTRY_PROBES {
            let Some(program) = self.ebpf.program_mut(spec.program) else {
                continue;
            };
            let unloaded = if spec.exit {
                <&mut FExit>::try_from(program).map(FExit::unload)
            } else {
                <&mut FEntry>::try_from(program).map(FEntry::unload)
            };
            // NotLoaded: this one was not loaded (a failed attach stopped earlier).
            if let Ok(Err(e)) = unloaded {
                if !matches!(e, aya::programs::ProgramError::NotLoaded) {
                    warn!("cannot unload {}: {e}", spec.program);
                }
            }
        }
    }
}

/// (BTF id, (module, BTF object id, BTF object fd) or None for vmlinux) of
/// each fentry program, in [`FENTRY_PROBES`] order. Module BTF is found by
/// name among the kernel's BTF objects and its ids read from that object.
type Resolved = Vec<(u32, Option<(&'static str, u32, OwnedFd)>)>;

fn resolve_fentry_targets(targets: &FentryTargets) -> Result<Resolved, AttachError> {
    let mut out: Resolved = Vec::new();
    let mut vmlinux_strings: Option<Vec<u8>> = None;
    let mut objects: Vec<(&'static str, Option<kernel_btf::ModuleBtf>)> = Vec::new();
    for (spec, builtin) in FENTRY_PROBES.iter().zip(targets.builtin) {
        if let Some(id) = builtin {
            out.push((id, None));
            continue;
        }
        let mut found = None;
        for module in MODULES {
            if !objects.iter().any(|(m, _)| *m == module) {
                let object = kernel_btf::find_module_btf(module).map_err(|e| {
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                        AttachError::Other(format!(
                            "{CAPS}; fentry on module functions also needs CAP_SYS_ADMIN to find the module's BTF: {e}"
                        ))
                    } else {
                        AttachError::FentryUnusable(format!("cannot list the kernel's BTF objects: {e}"))
                    }
                })?;
                objects.push((module, object));
            }
            let Some((_, Some(object))) = objects.iter().find(|(m, _)| *m == module) else {
                continue;
            };
            if vmlinux_strings.is_none() {
                let data = std::fs::read(VMLINUX_BTF)
                    .map_err(|e| AttachError::Other(format!("{VMLINUX_BTF}: {e}")))?;
                let strings = btf::string_section(&data)
                    .map_err(|e| AttachError::Other(format!("{VMLINUX_BTF}: {e}")))?
                    .to_vec();
                vmlinux_strings = Some(strings);
            }
            let base = SplitBase {
                strings: vmlinux_strings.as_deref().unwrap_or_default(),
                type_count: targets.vmlinux_types,
            };
            let ids = btf::func_ids(&object.data, Some(&base), &[spec.function])
                .map_err(|e| AttachError::Other(format!("BTF of module {module}: {e}")))?;
            if let Some(Some(id)) = ids.first() {
                let fd = object.fd.try_clone().map_err(|e| {
                    AttachError::Other(format!("duplicating a BTF descriptor: {e}"))
                })?;
                found = Some((*id, Some((module, object.id, fd))));
                break;
            }
        }
        match found {
            Some(target) => out.push(target),
            None => {
                // Loaded modules without a BTF object: this kernel has no
                // module BTF. A module not loaded: wait for it.
                let loaded_without_btf = objects.iter().find(|(m, o)| {
                    o.is_none() && Path::new("/sys/module").join(m).join("refcnt").exists()
                });
                return Err(match loaded_without_btf {
                    Some((m, _)) if symbol_exists(spec.function) => AttachError::FentryUnusable(format!(
                        "no BTF for module {m} (the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)"
                    )),
                    _ => AttachError::Missing(spec.function),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_release("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(parse_release("6.18"), Some((6, 18)));
        assert_eq!(parse_release("garbage"), None);
    }
}

//! Debian cloud kernels: resolve a series to a real package through its meta package,
//! download and extract it once into target/vm/kernels/<release>/, and compute the
//! module closure SYNPROXY tests need.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::host::{run_captured, Apt, PrivateAptSource};

const BOOKWORM: PrivateAptSource = PrivateAptSource {
    name: "bookworm",
    lines: &[
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ],
};

const BULLSEYE: PrivateAptSource = PrivateAptSource {
    name: "bullseye",
    lines: &[
        "deb http://deb.debian.org/debian bullseye main",
        "deb http://deb.debian.org/debian-security bullseye-security main",
    ],
};

/// A kernel series the VM test can boot, named like `6.12`.
#[derive(Debug, Clone)]
pub struct KernelSeries {
    pub name: &'static str,
    /// The meta package whose Depends names the real image package.
    pub meta_package: &'static str,
    /// Try the machine's own apt sources first.
    pub try_system_sources: bool,
    /// Debian suite used when the machine's sources do not serve this series.
    pub fallback_source: PrivateAptSource,
}

pub const SERIES: &[KernelSeries] = &[
    KernelSeries {
        name: "5.10",
        meta_package: "linux-image-cloud-amd64",
        try_system_sources: false,
        fallback_source: BULLSEYE,
    },
    KernelSeries {
        name: "6.1",
        meta_package: "linux-image-cloud-amd64",
        try_system_sources: true,
        fallback_source: BOOKWORM,
    },
    KernelSeries {
        name: "6.12",
        meta_package: "linux-image-6.12-cloud-amd64",
        try_system_sources: true,
        fallback_source: BOOKWORM,
    },
];

pub fn find_series(name: &str) -> Result<&'static KernelSeries> {
    SERIES.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        anyhow!(
            "unknown kernel series {name:?} (known: {})",
            known.join(", ")
        )
    })
}

/// The real image package a meta package points at.
#[derive(Debug, Clone)]
struct ResolvedPackage {
    package: String,
    version: String,
    /// None: the machine's own apt sources.
    source: Option<PrivateAptSource>,
}

/// An extracted kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub series: &'static str,
    /// `uname -r`, e.g. 6.1.0-56-cloud-amd64
    pub release: String,
    /// Debian package version, e.g. 6.1.192-2
    pub debian_version: String,
    pub root: PathBuf,
}

impl KernelImage {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn apt_cache_depends(meta_package: &str, apt_options: &[String]) -> Result<(String, String)> {
    let output = run_captured(Command::new("apt-cache").args(apt_options).args([
        "show",
        "--no-all-versions",
        meta_package,
    ]))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let depends = text
        .lines()
        .find_map(|line| line.strip_prefix("Depends:"))
        .ok_or_else(|| anyhow!("apt-cache show {meta_package}: no Depends field"))?;
    // e.g. "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    let first = depends.split(',').next().unwrap_or("").trim();
    let (package, rest) = first
        .split_once(' ')
        .ok_or_else(|| anyhow!("apt-cache show {meta_package}: unexpected Depends {depends:?}"))?;
    let version = rest
        .trim()
        .strip_prefix("(=")
        .and_then(|v| v.strip_suffix(')'))
        .map(str::trim)
        .ok_or_else(|| {
            anyhow!("apt-cache show {meta_package}: Depends has no exact version: {depends:?}")
        })?;
    if !package.starts_with("linux-image-") {
        bail!("apt-cache show {meta_package}: Depends names {package}, not a linux-image package");
    }
    Ok((package.to_string(), version.to_string()))
}

fn matches_series(series: &KernelSeries, package: &str) -> bool {
    package.starts_with(&format!("linux-image-{}.", series.name))
}

fn resolve(series: &'static KernelSeries, apt: &mut Apt, vm_dir: &Path) -> Result<ResolvedPackage> {
    if series.try_system_sources {
        let mut attempt = apt_cache_depends(series.meta_package, &[]);
        if attempt.is_err() {
            apt.update_system_once()?;
            attempt = apt_cache_depends(series.meta_package, &[]);
        }
        match attempt {
            Ok((package, version)) if matches_series(series, &package) => {
                return Ok(ResolvedPackage {
                    package,
                    version,
                    source: None,
                });
            }
            Ok((package, _)) => println!(
                "vm-test: system apt sources map {} to {package}, not series {}; using Debian {}",
                series.meta_package, series.name, series.fallback_source.name
            ),
            Err(error) => println!(
                "vm-test: system apt sources do not serve {} ({error:#}); using Debian {}",
                series.meta_package, series.fallback_source.name
            ),
        }
    }
    let source = series.fallback_source.clone();
    source.refresh(vm_dir)?;
    let (package, version) = apt_cache_depends(series.meta_package, &source.options(vm_dir))?;
    if !matches_series(series, &package) {
        bail!(
            "{} in Debian {} depends on {package}, which is not series {}",
            series.meta_package,
            source.name,
            series.name
        );
    }
    Ok(ResolvedPackage {
        package,
        version,
        source: Some(source),
    })
}

/// Resolves the series' current package and returns its extracted tree, downloading it
/// only when target/vm/kernels/<release>/ does not already hold that exact version.
pub fn fetch(series: &'static KernelSeries, apt: &mut Apt, vm_dir: &Path) -> Result<KernelImage> {
    let resolved = resolve(series, apt, vm_dir)?;
    let release = resolved
        .package
        .strip_prefix("linux-image-")
        .map(str::to_string)
        .ok_or_else(|| anyhow!("unexpected package name {}", resolved.package))?;
    let kernels_dir = vm_dir.join("kernels");
    let root = kernels_dir.join(&release);
    let version_file = root.join("debian-version");
    let image = KernelImage {
        series: series.name,
        release: release.clone(),
        debian_version: resolved.version.clone(),
        root: root.clone(),
    };
    if std::fs::read_to_string(&version_file)
        .ok()
        .as_deref()
        .map(str::trim)
        == Some(resolved.version.as_str())
    {
        println!(
            "vm-test: kernel {} {} ({}) cached in {}",
            series.name,
            release,
            resolved.version,
            root.display()
        );
        return Ok(image);
    }

    let partial = kernels_dir.join(format!("{release}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let started = std::time::Instant::now();
    let package_spec = format!("{}={}", resolved.package, resolved.version);
    let apt_options = resolved
        .source
        .as_ref()
        .map(|s| s.options(vm_dir))
        .unwrap_or_default();
    println!("vm-test: apt-get download {package_spec}");
    run_captured(
        Command::new("apt-get")
            .current_dir(&partial)
            .args(&apt_options)
            .args(["-q", "-oAPT::Sandbox::User=root", "download", &package_spec]),
    )?;
    let deb = std::fs::read_dir(&partial)
        .with_context(|| format!("reading {}", partial.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| {
            anyhow!(
                "apt-get download {package_spec} produced no .deb in {}",
                partial.display()
            )
        })?;
    let tree = partial.join("tree");
    run_captured(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    // The .deb ships no modules.dep: generate it.
    run_captured(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
    std::fs::write(tree.join("debian-version"), &resolved.version)
        .with_context(|| format!("writing {}", tree.join("debian-version").display()))?;
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("removing stale {}", root.display()))?;
    }
    std::fs::rename(&tree, &root)
        .with_context(|| format!("moving kernel tree to {}", root.display()))?;
    std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    println!(
        "vm-test: kernel {} {} ({}) downloaded and extracted in {:.1}s",
        series.name,
        release,
        resolved.version,
        started.elapsed().as_secs_f64()
    );
    if !image.vmlinuz().is_file() {
        bail!("{} has no {}", resolved.package, image.vmlinuz().display());
    }
    Ok(image)
}

/// Modules needed for xt and nft SYNPROXY over veth, IPv4 and IPv6, plus the matches
/// the traffic driver uses (ttl/hl for dropping the kernel's own RSTs).
pub const REQUIRED_MODULES: &[&str] = &[
    "veth",
    "nf_conntrack",
    "nf_synproxy_core",
    "x_tables",
    "ip_tables",
    "iptable_raw",
    "iptable_filter",
    "ipt_SYNPROXY",
    "ip6_tables",
    "ip6table_raw",
    "ip6table_filter",
    "ip6t_SYNPROXY",
    "xt_CT",
    "xt_conntrack",
    "xt_tcpudp",
    "xt_hl",
    "nfnetlink",
    "nf_tables",
    "nft_compat",
    "nft_ct",
    "nft_synproxy",
];

/// Loaded when the kernel has them as modules; tolerated when they are built in or absent.
/// nft_counter: iptables-nft adds a counter to every rule; it is a module in 5.10 (built
/// into nf_tables later), and the guest has no modprobe to autoload it.
pub const OPTIONAL_MODULES: &[&str] = &[
    "nft_counter",
    "xt_state",
    "xt_comment",
    "xt_multiport",
    "xt_mark",
];

/// The module that creates /proc/net/stat/synproxy.
pub const SYNPROXY_CORE_MODULE: &str = "nf_synproxy_core";

#[derive(Debug, Clone)]
pub struct KernelModule {
    pub name: String,
    /// Path below the kernel's lib/modules/<release>/ directory.
    pub relative_path: String,
}

/// Module closure in load order, split at the SYNPROXY core so the guest can start the
/// agent before /proc/net/stat/synproxy exists.
#[derive(Debug, Clone)]
pub struct ModulePlan {
    /// Everything that neither is nor depends on nf_synproxy_core.
    pub early: Vec<KernelModule>,
    /// nf_synproxy_core and everything that depends on it.
    pub late: Vec<KernelModule>,
}

pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

pub fn plan_modules(image: &KernelImage) -> Result<ModulePlan> {
    let dep_path = image.modules_dir().join("modules.dep");
    let text = std::fs::read_to_string(&dep_path)
        .with_context(|| format!("reading {}", dep_path.display()))?;
    plan_modules_from_dep(&text)
        .with_context(|| format!("resolving module closure from {}", dep_path.display()))
}

pub fn plan_modules_from_dep(modules_dep: &str) -> Result<ModulePlan> {
    // name -> (path, dependency names)
    let mut graph: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((module_path, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(module_name).collect();
        graph.insert(module_name(module_path), (module_path.to_string(), deps));
    }
    let mut roots: Vec<&str> = Vec::new();
    for name in REQUIRED_MODULES {
        if !graph.contains_key(*name) {
            bail!("module {name} is missing (built in or not built?)");
        }
        roots.push(name);
    }
    roots.extend(
        OPTIONAL_MODULES
            .iter()
            .copied()
            .filter(|name| graph.contains_key(*name)),
    );

    // Depth-first post-order: dependencies before dependants.
    fn visit(
        name: &str,
        graph: &HashMap<String, (String, Vec<String>)>,
        visited: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !visited.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = graph
            .get(name)
            .ok_or_else(|| anyhow!("dependency {name} missing from modules.dep"))?;
        for dep in deps {
            visit(dep, graph, visited, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    let mut visited = BTreeSet::new();
    let mut order = Vec::new();
    for root in roots {
        visit(root, &graph, &mut visited, &mut order)?;
    }

    // Which modules (transitively) need the SYNPROXY core.
    let mut needs_core: BTreeMap<String, bool> = BTreeMap::new();
    for name in &order {
        let (_, deps) = &graph[name];
        let needs = name == SYNPROXY_CORE_MODULE || deps.iter().any(|d| d == SYNPROXY_CORE_MODULE);
        needs_core.insert(name.clone(), needs);
    }
    let mut plan = ModulePlan {
        early: Vec::new(),
        late: Vec::new(),
    };
    for name in order {
        let module = KernelModule {
            relative_path: graph[&name].0.clone(),
            name: name.clone(),
        };
        if needs_core[&name] {
            plan.late.push(module);
        } else {
            plan.early.push(module);
        }
    }
    Ok(plan)
}

/// Reads a module file, decompressing .ko.xz (6.12) with xz on the host.
pub fn read_module(image: &KernelImage, module: &KernelModule) -> Result<Vec<u8>> {
    let path = image.modules_dir().join(&module.relative_path);
    if module.relative_path.ends_with(".ko.xz") {
        let output = run_captured(Command::new("xz").arg("-dc").arg(&path))?;
        Ok(output.stdout)
    } else if module.relative_path.ends_with(".ko") {
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    } else {
        bail!("unsupported module compression: {}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_orders_dependencies_first_and_splits_at_core() {
        let mut dep = String::new();
        for name in REQUIRED_MODULES {
            let deps = match *name {
                "ipt_SYNPROXY" => {
                    "kernel/nf_synproxy_core.ko.xz kernel/nf_conntrack.ko.xz kernel/x_tables.ko.xz"
                }
                "nf_synproxy_core" => "kernel/nf_conntrack.ko.xz",
                "xt_CT" => "kernel/nf_conntrack.ko.xz kernel/x_tables.ko.xz",
                "nf_conntrack" => "kernel/lib-crc.ko.xz",
                _ => "",
            };
            dep.push_str(&format!("kernel/{name}.ko.xz: {deps}\n"));
        }
        dep.push_str("kernel/lib-crc.ko.xz:\n");
        let plan = plan_modules_from_dep(&dep).unwrap();
        let early: Vec<&str> = plan.early.iter().map(|m| m.name.as_str()).collect();
        let late: Vec<&str> = plan.late.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| early.iter().position(|e| *e == n).unwrap();
        assert!(pos("lib_crc") < pos("nf_conntrack"));
        assert!(pos("nf_conntrack") < pos("xt_CT"));
        assert!(!early.contains(&"nf_synproxy_core"));
        assert_eq!(late.first(), Some(&"nf_synproxy_core"));
        assert!(late.contains(&"ipt_SYNPROXY"));
    }
}

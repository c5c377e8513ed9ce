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

/// Debian unstable: the newest kernel series the archive serves. Its version moves
/// (7.2 when this was written); the series is named `sid`, not by number.
const SID: PrivateAptSource = PrivateAptSource {
    name: "sid",
    lines: &["deb http://deb.debian.org/debian sid main"],
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
    /// The image package the meta package must resolve to starts with this, e.g.
    /// `linux-image-6.1.` (`linux-image-` for sid, whose version moves).
    pub package_prefix: &'static str,
    /// Try the machine's own apt sources first.
    pub try_system_sources: bool,
    /// Debian suite used when the machine's sources do not serve this series.
    pub fallback_source: PrivateAptSource,
    /// Under TCG, run all vCPUs in one host thread. 7.2 patches its own code
    /// (static branches, int3 first) in ways that multi-threaded TCG races on:
    /// "Oops: int3" in 3 of 4 boots at worst. One thread costs about a fifth
    /// more time for that kernel; the others never hit the race.
    pub single_thread_tcg: bool,
    /// The boot that runs the top-sources check also carries Debian's
    /// `prometheus`, which scrapes the agent during the spoofed flood (one
    /// series is enough: the series Prometheus creates do not depend on the
    /// kernel, and the 50 MB binary costs each boot that carries it time).
    pub real_prometheus: bool,
}

pub const SERIES: &[KernelSeries] = &[
    KernelSeries {
        name: "5.10",
        package_prefix: "linux-image-5.10.",
        meta_package: "linux-image-cloud-amd64",
        try_system_sources: false,
        fallback_source: BULLSEYE,
        single_thread_tcg: false,
        real_prometheus: false,
    },
    KernelSeries {
        name: "6.1",
        package_prefix: "linux-image-6.1.",
        meta_package: "linux-image-cloud-amd64",
        try_system_sources: true,
        fallback_source: BOOKWORM,
        single_thread_tcg: false,
        real_prometheus: false,
    },
    KernelSeries {
        name: "6.12",
        package_prefix: "linux-image-6.12.",
        meta_package: "linux-image-6.12-cloud-amd64",
        try_system_sources: true,
        fallback_source: BOOKWORM,
        single_thread_tcg: false,
        real_prometheus: true,
    },
    KernelSeries {
        name: "sid",
        package_prefix: "linux-image-",
        meta_package: "linux-image-cloud-amd64",
        try_system_sources: false,
        fallback_source: SID,
        single_thread_tcg: true,
        real_prometheus: false,
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
    /// Packages the image package needs for its files, exact versions: since Debian's
    /// 6.16-ish packaging (sid) `linux-image-<release>` is empty and vmlinuz, the
    /// modules and modules.builtin/order live in `linux-{binary,modules,base}-<release>`.
    /// Empty for older kernels, whose image package holds everything.
    parts: Vec<(String, String)>,
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
    /// `boot/vmlinuz-<release>` (up to 6.12), or `lib/modules/<release>/vmlinuz` (sid's
    /// split packages install it there).
    pub fn vmlinuz(&self) -> PathBuf {
        let boot = self
            .root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release));
        if boot.is_file() {
            return boot;
        }
        self.modules_dir().join("vmlinuz")
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// One entry of a Depends field: the package and its exact `(= version)`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dependency {
    package: String,
    exact_version: Option<String>,
}

/// Parses a Depends field; of alternatives (`a | b`) only the first is kept.
fn parse_depends(depends: &str) -> Vec<Dependency> {
    depends
        .split(',')
        .filter_map(|entry| {
            let first = entry.split('|').next()?.trim();
            let (package, rest) = match first.split_once(' ') {
                Some((package, rest)) => (package, rest.trim()),
                None => (first, ""),
            };
            if package.is_empty() {
                return None;
            }
            let exact_version = rest
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_string());
            Some(Dependency {
                package: package.to_string(),
                exact_version,
            })
        })
        .collect()
}

/// The Depends of `package` (its candidate version) in the given apt state.
fn apt_cache_depends(package: &str, apt_options: &[String]) -> Result<Vec<Dependency>> {
    let output = run_captured(Command::new("apt-cache").args(apt_options).args([
        "show",
        "--no-all-versions",
        package,
    ]))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let depends = text
        .lines()
        .find_map(|line| line.strip_prefix("Depends:"))
        .ok_or_else(|| anyhow!("apt-cache show {package}: no Depends field"))?;
    Ok(parse_depends(depends))
}

/// The image package (`linux-image-<release>`, exact version) a meta package names.
/// sid's meta package lists `linux-base-cloud-amd64` first, so look for the image.
fn image_dependency(meta_package: &str, depends: &[Dependency]) -> Result<(String, String)> {
    let image = depends
        .iter()
        .find(|d| d.package.starts_with("linux-image-"))
        .ok_or_else(|| {
            anyhow!("apt-cache show {meta_package}: Depends names no linux-image package")
        })?;
    let version = image.exact_version.clone().ok_or_else(|| {
        anyhow!(
            "apt-cache show {meta_package}: Depends has no exact version for {}",
            image.package
        )
    })?;
    Ok((image.package.clone(), version))
}

/// The packages holding the files of a split image package: its dependencies named
/// `linux-*-<release>` with an exact version (sid: linux-binary, linux-modules,
/// linux-base). Older image packages depend on none of that shape.
fn image_parts(image_package: &str, depends: &[Dependency]) -> Vec<(String, String)> {
    let Some(release) = image_package.strip_prefix("linux-image-") else {
        return Vec::new();
    };
    let suffix = format!("-{release}");
    depends
        .iter()
        .filter(|d| d.package.starts_with("linux-") && d.package.ends_with(&suffix))
        .filter_map(|d| Some((d.package.clone(), d.exact_version.clone()?)))
        .collect()
}

/// Resolves the series in the given apt state (`source`: None for the machine's own).
fn resolve_in(
    series: &KernelSeries,
    source: Option<&PrivateAptSource>,
    vm_dir: &Path,
) -> Result<ResolvedPackage> {
    let apt_options = source.map(|s| s.options(vm_dir)).unwrap_or_default();
    let source_name = source
        .map(|s| format!("Debian {}", s.name))
        .unwrap_or_else(|| "the system apt sources".to_string());
    let meta_depends = apt_cache_depends(series.meta_package, &apt_options)?;
    let (package, version) = image_dependency(series.meta_package, &meta_depends)?;
    if !package.starts_with(series.package_prefix) {
        bail!(
            "{} in {source_name} depends on {package}, which is not series {}",
            series.meta_package,
            series.name
        );
    }
    let parts = image_parts(&package, &apt_cache_depends(&package, &apt_options)?);
    Ok(ResolvedPackage {
        package,
        version,
        parts,
        source: source.cloned(),
    })
}

fn resolve(series: &'static KernelSeries, apt: &mut Apt, vm_dir: &Path) -> Result<ResolvedPackage> {
    if series.try_system_sources {
        let mut attempt = resolve_in(series, None, vm_dir);
        if attempt.is_err() {
            apt.update_system_once()?;
            attempt = resolve_in(series, None, vm_dir);
        }
        match attempt {
            Ok(resolved) => return Ok(resolved),
            Err(error) => println!(
                "vm-test: system apt sources do not serve series {} ({error:#}); using Debian {}",
                series.name, series.fallback_source.name
            ),
        }
    }
    let source = &series.fallback_source;
    source.refresh(vm_dir)?;
    resolve_in(series, Some(source), vm_dir)
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
    let mut package_specs = vec![format!("{}={}", resolved.package, resolved.version)];
    package_specs.extend(
        resolved
            .parts
            .iter()
            .map(|(package, version)| format!("{package}={version}")),
    );
    let apt_options = resolved
        .source
        .as_ref()
        .map(|s| s.options(vm_dir))
        .unwrap_or_default();
    println!("vm-test: apt-get download {}", package_specs.join(" "));
    run_captured(
        Command::new("apt-get")
            .current_dir(&partial)
            .args(&apt_options)
            .args(["-q", "-oAPT::Sandbox::User=root", "download"])
            .args(&package_specs),
    )?;
    let debs: Vec<PathBuf> = std::fs::read_dir(&partial)
        .with_context(|| format!("reading {}", partial.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    if debs.len() != package_specs.len() {
        bail!(
            "apt-get download {} left {} .deb files in {} (expected {})",
            package_specs.join(" "),
            debs.len(),
            partial.display(),
            package_specs.len()
        );
    }
    let tree = partial.join("tree");
    for deb in &debs {
        run_captured(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
    }
    move_usr_modules(&tree, &release)?;
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
        bail!(
            "{} has no vmlinuz ({})",
            resolved.package,
            image.vmlinuz().display()
        );
    }
    Ok(image)
}

/// Newer packages install to /usr/lib/modules/<release>/ (merged /usr); depmod -b and
/// the module plan look in <root>/lib/modules/<release>/, so move it there.
fn move_usr_modules(tree: &Path, release: &str) -> Result<()> {
    let usr_dir = tree.join("usr/lib/modules").join(release);
    if !usr_dir.is_dir() {
        return Ok(());
    }
    let lib_modules = tree.join("lib/modules");
    let lib_dir = lib_modules.join(release);
    if lib_dir.exists() {
        bail!(
            "{} and {} both exist: unexpected package layout",
            usr_dir.display(),
            lib_dir.display()
        );
    }
    std::fs::create_dir_all(&lib_modules)
        .with_context(|| format!("creating {}", lib_modules.display()))?;
    std::fs::rename(&usr_dir, &lib_dir)
        .with_context(|| format!("moving {} to {}", usr_dir.display(), lib_dir.display()))
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
    // nfnetlink comes with nf_tables' dependencies where it is a module; sid's kernel
    // builds it into the netfilter core.
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

/// Reads a module file, decompressing .ko.xz (6.12, sid) with xz and .ko.zst with zstd
/// on the host (the guest's busybox insmod takes plain .ko only).
pub fn read_module(image: &KernelImage, module: &KernelModule) -> Result<Vec<u8>> {
    let path = image.modules_dir().join(&module.relative_path);
    if module.relative_path.ends_with(".ko.xz") {
        let output = run_captured(Command::new("xz").arg("-dc").arg(&path))?;
        Ok(output.stdout)
    } else if module.relative_path.ends_with(".ko.zst") {
        let output = run_captured(Command::new("zstd").args(["-dc", "-q"]).arg(&path))?;
        Ok(output.stdout)
    } else if module.relative_path.ends_with(".ko.gz") {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut contents = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut contents)
            .with_context(|| format!("decompressing {}", path.display()))?;
        Ok(contents)
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

    #[test]
    fn depends_parsing_finds_the_image_and_its_split_parts() {
        // sid's meta package lists linux-base-cloud-amd64 first.
        let meta = parse_depends(
            " linux-base-cloud-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)",
        );
        let (package, version) = image_dependency("linux-image-cloud-amd64", &meta).unwrap();
        assert_eq!(package, "linux-image-7.2.13+deb14-cloud-amd64");
        assert_eq!(version, "7.2.13-1");
        let image = parse_depends(
            " dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
             linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
             linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
             linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)",
        );
        let parts: Vec<String> = image_parts(&package, &image)
            .into_iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        assert_eq!(
            parts,
            [
                "linux-base-7.2.13+deb14-cloud-amd64=7.2.13-1",
                "linux-binary-7.2.13+deb14-cloud-amd64=7.2.13-1",
                "linux-modules-7.2.13+deb14-cloud-amd64=7.2.13-1",
            ]
        );
        // An older image package holds its own files.
        let bookworm = parse_depends(
            " kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool",
        );
        assert!(image_parts("linux-image-6.1.0-56-cloud-amd64", &bookworm).is_empty());
        let old_meta = parse_depends(" linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)");
        assert_eq!(
            image_dependency("linux-image-cloud-amd64", &old_meta)
                .unwrap()
                .0,
            "linux-image-6.1.0-56-cloud-amd64"
        );
    }
}

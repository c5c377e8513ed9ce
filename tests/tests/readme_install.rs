//! The README's install walkthrough (Install, A2 to A6), run as written: the
//! blocks after `<!-- install:NAME -->` markers are taken from README.md and
//! run by bash, in a private mount namespace whose `/etc` and `/usr` are
//! overlays on temporary directories (nothing the steps write reaches the
//! machine). The package's files are put in place from
//! `[package.metadata.deb]` (the agent from this build), as `dpkg -i` would.
//! Then: the certificate, password and `web.yml` of A2 (openssl, htpasswd,
//! `promtool check web-config`); A3's drop-ins (`systemd-analyze verify`);
//! the agent started as the unit would start it (its environment from the
//! unit, `/etc/default/synproxy-agent` and the drop-ins, a dynamic-range uid
//! with the drop-in's supplementary group and no capabilities); A4's curl
//! lines (the build info with the password, 401 without); A5's files and
//! scrape job in Debian's Prometheus until `up` is 1 and the alerting rules are
//! loaded; A6's dashboard path in the package.
//!
//! Substitutions, each because this machine is shared or has no systemd:
//! `sudo` is a shell function (the test runs as root), `systemctl` records
//! its arguments (PID 1 is not systemd; the test starts the agent itself),
//! `gw01` is 127.0.0.1 in the namespace's `/etc/hosts`, port 10816 becomes a
//! free port, and the agent runs with `--no-ebpf` (no kprobes on the host).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use synproxy_tests::container::{image_archive, image_dir, Podman};
use synproxy_tests::harness::{agent_binary, skip_or_fail, wait_until, Needs};
use synproxy_tests::prometheus::{http_get, PrometheusServer};
use synproxy_tests::require;

const MARK: &str = "<!-- install:";
const UNIT_SRC: &str = "deploy/systemd/synproxy-agent.service";
const UNIT: &str = "/usr/lib/systemd/system/synproxy-agent.service";
const DROP_INS: &str = "/etc/systemd/system/synproxy-agent.service.d";
const PORT: &str = ":10816";
/// Where systemd allocates dynamic users (61184-65519).
const DYNAMIC_UID: u32 = 61184;

fn needs() -> Needs {
    Needs {
        what: "the README install walkthrough test",
        root: true,
        synproxy: true,
        programs: &[
            "unshare",
            "nsenter",
            "setpriv",
            "bash",
            "openssl",
            "htpasswd",
            "curl",
            "promtool",
            "prometheus",
            "groupadd",
            "systemd-analyze",
        ],
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced block after each `<!-- install:NAME -->` line, by name.
fn readme_blocks(readme: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix(MARK)
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "README: {line} is not followed by a fenced block but by {fence:?}"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let previous = blocks.insert(name.to_string(), body.join("\n") + "\n");
        assert!(previous.is_none(), "README: two blocks marked {name}");
    }
    blocks
}

/// `[package.metadata.deb]` assets: (source relative to synproxy-user, destination, mode).
fn deb_assets() -> Vec<(String, String, u32)> {
    let toml = read(&repo().join("synproxy-user/Cargo.toml"));
    let start = toml
        .find("\nassets = [")
        .unwrap_or_else(|| panic!("synproxy-user/Cargo.toml: no assets"));
    toml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != "]")
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            let [src, dest, mode] = fields[..] else {
                return None;
            };
            let mode = u32::from_str_radix(mode, 8).ok()?;
            Some((src.to_string(), dest.to_string(), mode))
        })
        .collect()
}

/// A mount namespace with `/etc` and `/usr` on overlays, held by a `sleep`.
struct Namespace {
    holder: Child,
    dir: PathBuf,
}

impl Namespace {
    fn new(dir: &Path) -> Self {
        let mut mounts = String::new();
        for top in ["etc", "usr"] {
            for sub in ["upper", "work"] {
                let d = dir.join(top).join(sub);
                std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            }
            let d = dir.join(top);
            mounts += &format!(
                "mount -t overlay overlay -o lowerdir=/{top},upperdir={0}/upper,workdir={0}/work /{top} && ",
                d.display()
            );
        }
        // Killed with the test's thread if the test dies before the drop.
        let mut holder = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &format!("{mounts}echo ready && exec sleep 600")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("unshare: {e}"));
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "ready", "the mount namespace was not set up");
        Self {
            holder,
            dir: dir.to_path_buf(),
        }
    }

    /// `path` as the namespace sees it.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    fn enter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.holder.id()),
            "--".into(),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let enter = self.enter();
        let mut c = Command::new(&enter[0]);
        c.args(&enter[1..]).arg(program);
        c
    }

    /// `script` run by bash in the namespace, from `cwd`, with the
    /// walkthrough's `sudo` and `systemctl` stand-ins.
    fn bash(&self, script: &str, cwd: &str) -> Output {
        let systemctl_log = self.dir.join("systemctl.log");
        let prelude = format!(
            "set -euo pipefail\nsudo() {{ \"$@\"; }}\nsystemctl() {{ echo \"$*\" >> '{}'; }}\ncd '{cwd}'\n",
            systemctl_log.display()
        );
        let out = self
            .command("bash")
            .args(["-c", &format!("{prelude}{script}")])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("bash: {e}"));
        assert!(
            out.status.success(),
            "README block failed ({}):\n{script}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// What `dpkg -i` of the package puts on disk (the man page aside,
    /// which `cargo xtask package` generates).
    fn install_package(&self) {
        let put = |dest: &str, text: &[u8], mode: u32| {
            let path = self.path(dest);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
            }
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
            std::fs::set_permissions(&path, perms)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        };
        for (src, dest, mode) in deb_assets() {
            let source = match src.as_str() {
                "target/release/synproxy-agent" => agent_binary(),
                s if s.ends_with(".1.gz") => continue,
                s => repo().join("synproxy-user").join(s),
            };
            for source in expand(&source) {
                let mut dest = format!("/{dest}");
                if dest.ends_with('/') {
                    let name = source.file_name().unwrap_or_default().to_string_lossy();
                    dest += &name;
                }
                let bytes =
                    std::fs::read(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
                put(&dest, &bytes, mode);
            }
        }
        let unit = read(&repo().join(UNIT_SRC))
            .replace("/usr/local/bin/synproxy-agent", "/usr/bin/synproxy-agent");
        put(UNIT, unit.as_bytes(), 0o644);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        synproxy_tests::child::stop(&mut self.holder);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The environment, supplementary groups and command line the unit with its
/// drop-ins gives the agent (systemd's rules for the settings used here:
/// later `Environment=` wins, `EnvironmentFile=` wins over `Environment=`).
struct Service {
    env: BTreeMap<String, String>,
    groups: Vec<String>,
    exec: Vec<String>,
}

fn service(ns: &Namespace) -> Service {
    let mut files = vec![ns.path(UNIT)];
    let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(ns.path(DROP_INS))
        .unwrap_or_else(|e| panic!("{DROP_INS}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    drop_ins.sort();
    files.extend(drop_ins);
    let (mut env, mut env_files, mut groups, mut exec) =
        (BTreeMap::new(), Vec::new(), Vec::new(), String::new());
    for file in &files {
        for line in read(file).lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "Environment" => {
                    assert!(!value.contains('"'), "{}: quoted {line}", file.display());
                    for pair in value.split_whitespace() {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        env.insert(k.to_string(), v.to_string());
                    }
                }
                "EnvironmentFile" => env_files.push(value.trim_start_matches('-').to_string()),
                "SupplementaryGroups" => groups.extend(value.split_whitespace().map(String::from)),
                "ExecStart" => exec = value.to_string(),
                _ => {}
            }
        }
    }
    for file in env_files {
        let Ok(text) = std::fs::read_to_string(ns.path(&file)) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
    }
    let args = env.get("ARGS").cloned().unwrap_or_default();
    let exec = exec
        .split_whitespace()
        .flat_map(|w| match w {
            "$ARGS" => args.split_whitespace().map(String::from).collect(),
            w => vec![w.to_string()],
        })
        .collect();
    Service { env, groups, exec }
}

/// The group's gid in the namespace's /etc/group.
fn gid(ns: &Namespace, name: &str) -> u32 {
    read(&ns.path("/etc/group"))
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no group {name} in the namespace's /etc/group"))
}

/// The agent as the unit starts it, with `groups` (gids) as its
/// supplementary groups and no capabilities.
fn start_agent(ns: &Namespace, svc: &Service, groups: &[u32], listen: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let uid = DYNAMIC_UID + std::process::id() % 4000;
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = match groups.is_empty() {
        true => "--clear-groups".to_string(),
        false => format!("--groups={}", groups.join(",")),
    };
    let mut c = ns.command("setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        groups,
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
    ])
    .args(&svc.exec)
    .env_clear()
    .envs(&svc.env)
    .env("SYNPROXY_AGENT_PROMETHEUS_LISTEN", listen)
    .env("SYNPROXY_AGENT_NO_EBPF", "true")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    c.spawn()
        .unwrap_or_else(|e| panic!("starting the agent: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// The README's marked blocks, and a namespace with the package installed
/// and `gw01` in its /etc/hosts.
fn setup(name: &str) -> (BTreeMap<String, String>, Namespace) {
    let blocks = readme_blocks(&read(&repo().join("README.md")));
    let dir = std::env::temp_dir().join(format!("spx-readme-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ns = Namespace::new(&dir);
    ns.install_package();
    let hosts = ns.path("/etc/hosts");
    let hosts_text = read(&hosts) + "127.0.0.1 gw01\n";
    std::fs::write(&hosts, hosts_text).unwrap_or_else(|e| panic!("{}: {e}", hosts.display()));
    (blocks, ns)
}

fn block<'a>(blocks: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    blocks
        .get(name)
        .unwrap_or_else(|| panic!("README: no block marked {MARK}{name} -->"))
}

/// A4's curl lines against the agent on `port`: the build info with the
/// password, 401 without.
fn check_scrape(ns: &Namespace, blocks: &BTreeMap<String, String>, port: u16) {
    let check = block(blocks, "check").replace(PORT, &format!(":{port}"));
    let out = ns.bash(&check, "/");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("synproxy_agent_build_info")),
        "A4: {stdout}"
    );
    assert_eq!(
        lines.last(),
        Some(&"401"),
        "A4 without the password: {stdout}"
    );
}

fn wait_for_port(addr: &str, exited: &mut dyn FnMut() -> Option<String>) {
    wait_until("the agent's endpoint", Duration::from_secs(60), || {
        if let Some(why) = exited() {
            panic!("the agent exited: {why}");
        }
        std::net::TcpStream::connect(addr)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn the_package_walkthrough_works_as_written() {
    require!(needs().check());
    let (blocks, ns) = setup("deb");
    let block = |name: &str| block(&blocks, name);
    let dir = ns.dir.clone();

    // A2: certificate, password, web.yml, group, promtool.
    let out = ns.bash(block("tls"), "/");
    let promtool = String::from_utf8_lossy(&out.stderr);
    assert!(promtool.contains("SUCCESS"), "promtool: {promtool}");
    let tls_gid = gid(&ns, "synproxy-agent-tls");
    for (file, mode, group) in [
        ("agent.key", 0o640, tls_gid),
        ("web.yml", 0o640, tls_gid),
        ("scrape.password", 0o600, 0),
    ] {
        let path = ns.path(&format!("/etc/synproxy-agent/{file}"));
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, 0, group),
            "{file}: mode, owner, group"
        );
    }

    // A3: the drop-ins, verified; systemctl asked to restart the unit.
    ns.bash(block("unit"), "/");
    let calls = read(&dir.join("systemctl.log"));
    assert!(
        calls.lines().any(|l| l == "restart synproxy-agent"),
        "A3 does not restart the unit: {calls}"
    );
    let verify = ns
        .command("systemd-analyze")
        .args(["verify", "--man=no", UNIT])
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}"));
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify with the drop-ins: {stderr}"
    );

    let svc = service(&ns);
    assert_eq!(
        svc.env
            .get("SYNPROXY_AGENT_PROMETHEUS_LISTEN")
            .map(String::as_str),
        Some("[::]:10816"),
        "the drop-ins' listen address"
    );
    assert_eq!(svc.groups, ["synproxy-agent-tls"], "SupplementaryGroups=");
    assert_eq!(
        svc.exec.first().map(String::as_str),
        Some("/usr/bin/synproxy-agent")
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let with_port = |text: &str| text.replace(PORT, &format!(":{port}"));

    // Without the group the dynamic user cannot read web.yml: the drop-in's
    // group is what makes the walkthrough work.
    let mut refused = start_agent(&ns, &svc, &[], &listen, &dir.join("refused.log"));
    let status = wait_until(
        "the agent without the group exits",
        Duration::from_secs(30),
        || {
            refused
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        },
    );
    let log = read(&dir.join("refused.log"));
    assert_eq!(status.code(), Some(2), "without the group: {log}");
    assert!(
        log.contains("--web-config-file"),
        "without the group: {log}"
    );
    println!("without the group (exit 2): {}", log.trim());

    let log_path = dir.join("agent.log");
    let mut agent = start_agent(&ns, &svc, &[tls_gid], &listen, &log_path);
    wait_for_port(&listen, &mut || {
        let status = agent.try_wait().ok()??;
        Some(format!("{status}: {}", read(&log_path)))
    });

    // A4: with the password the build info, without it 401.
    check_scrape(&ns, &blocks, port);

    // A5: the Prometheus server's files, from a directory with copies of the
    // agent host's, and the scrape job.
    let copies = dir.join("from-gw01");
    std::fs::create_dir_all(&copies).unwrap_or_else(|e| panic!("{}: {e}", copies.display()));
    for from in [
        "/etc/synproxy-agent/agent.crt",
        "/etc/synproxy-agent/scrape.password",
        "/usr/share/synproxy-agent/prometheus/synproxy-alerts.yml",
    ] {
        let name = Path::new(from).file_name().unwrap_or_default();
        std::fs::copy(ns.path(from), copies.join(name)).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    ns.bash(block("prometheus"), &copies.to_string_lossy());
    let yml = block("prometheus.yml");
    let jobs = yml
        .strip_prefix("scrape_configs:\n")
        .unwrap_or_else(|| panic!("A5: the YAML does not start with scrape_configs: {yml}"));
    let enter = ns.enter();
    let enter: Vec<&str> = enter.iter().map(String::as_str).collect();
    let server =
        PrometheusServer::start_under(&with_port(jobs), &enter).unwrap_or_else(|e| panic!("{e:#}"));
    wait_until(
        "up{job=\"synproxy-agent\"} == 1",
        Duration::from_secs(60),
        || {
            let up = server
                .query("up{job=\"synproxy-agent\"}")
                .map_err(|e| e.to_string())?;
            let v = up.first().map(|s| s.value);
            if v == Some(1.0) {
                Ok(())
            } else {
                Err(format!("up = {v:?}; {:?}", server.last_errors()))
            }
        },
    );
    let (_, _, rules) =
        http_get(server.addr(), "/api/v1/rules", None).unwrap_or_else(|e| panic!("rules: {e:#}"));
    assert!(
        rules.contains("SynproxyAgentAbsent"),
        "A5's alerting rules are not loaded: {rules}"
    );

    // A6: the dashboard the README names is in the package, and is the mixin's.
    let dashboard = "/usr/share/synproxy-agent/grafana/synproxy-agent.json";
    let readme = read(&repo().join("README.md"));
    assert!(readme.contains(dashboard), "README names no {dashboard}");
    assert_eq!(
        read(&ns.path(dashboard)),
        read(&repo().join("deploy/grafana/synproxy-agent.json")),
        "{dashboard} in the package"
    );

    drop(server);
    synproxy_tests::child::stop(&mut agent);
}

/// B: A2's files, the image loaded and run by the README's podman lines (in
/// podman storage of the test's own, the image `cargo xtask image` built),
/// then A4 against the container.
#[test]
fn the_container_walkthrough_works_as_written() {
    require!(needs().check());
    require!(Needs {
        what: "the README container walkthrough test",
        root: true,
        synproxy: false,
        programs: &["podman", "runc"],
    }
    .check());
    let archive = image_archive();
    if !archive.is_file() {
        require!(skip_or_fail(&format!(
            "the README container walkthrough test needs the image {}: run `cargo xtask image` (cargo xtask test does)",
            archive.display()
        )));
    }
    let (blocks, ns) = setup("image");
    ns.bash(block(&blocks, "tls"), "/");
    // The README mounts /run/netns (which `ip netns add` creates).
    std::fs::create_dir_all("/run/netns").unwrap_or_else(|e| panic!("/run/netns: {e}"));
    let podman = Podman::new(image_dir().join(format!("readme-{}", std::process::id())))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let storage: Vec<String> = podman
        .command()
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let port = free_port();
    // Installing packages and building the image are the suite's own steps.
    let steps: Vec<&str> = block(&blocks, "container")
        .lines()
        .filter(|l| !l.starts_with("sudo apt-get install") && !l.starts_with("cargo xtask image"))
        .collect();
    let script = format!(
        "podman() {{ command podman {} \"$@\"; }}\n{}\n",
        storage.join(" "),
        steps.join("\n").replace(PORT, &format!(":{port}"))
    );
    let out = ns.bash(&script, &repo().to_string_lossy());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let logs = || {
        let out = podman.command().args(["logs", "synproxy-agent"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string())
    };
    wait_for_port(&format!("127.0.0.1:{port}"), &mut || {
        let state = podman
            .command()
            .args([
                "inspect",
                "--format",
                "{{.State.Running}}",
                "synproxy-agent",
            ])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&state.stdout).trim() == "false")
            .then(|| format!("container {id}: {}", logs()))
    });
    check_scrape(&ns, &blocks, port);
    // Its configuration is the mounted web.yml, read-only.
    assert!(!logs().contains("ERROR"), "{}", logs());
}

/// An asset's files: itself, or for `dir/*.ext` (cargo-deb's glob) every
/// `.ext` file of `dir`, sorted.
fn expand(source: &std::path::Path) -> Vec<std::path::PathBuf> {
    let name = source.file_name().unwrap_or_default().to_string_lossy();
    let Some(ext) = name.strip_prefix("*.") else {
        return vec![source.to_path_buf()];
    };
    let dir = source.parent().unwrap_or(std::path::Path::new("."));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: matches no file", source.display());
    files
}

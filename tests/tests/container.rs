//! The container image and the DaemonSet: the manifest passes the Kubernetes
//! schema validator and grants exactly the capability table's row; the image
//! (built by `cargo xtask image`) runs under rootful podman with the
//! manifest's own settings (host network and PID, its capabilities only, its
//! mounts, read-only root, no privilege escalation, its arguments) against
//! real SYNPROXY namespaces, and its /metrics equal the kernel's counters,
//! also for a namespace created after it started (the /run/netns mount's
//! propagation). No eBPF on a kernel without kprobes: the agent then reports
//! /proc only, which is what is compared.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use synproxy_common::Counter;
use synproxy_tests::caps;
use synproxy_tests::connections::Connections;
use synproxy_tests::container::{
    document, image_archive, image_dir, run_ok, strings, validator_venv, workspace, yaml_documents,
    Podman,
};
use synproxy_tests::harness::{skip_or_fail, Needs};
use synproxy_tests::packet::{TcpSegment, ACK};
use synproxy_tests::prometheus::http_get;
use synproxy_tests::require;
use synproxy_tests::rules::Flavour;
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::RawSender;
use synproxy_tests::{packet::V6Checksum, proc_counters};

const MANIFEST_NEEDS: Needs = Needs {
    what: "Kubernetes manifest tests",
    root: false,
    programs: &["python3"],
    synproxy: false,
};

const CONTAINER_NEEDS: Needs = Needs {
    what: "container tests",
    root: true,
    programs: &["podman", "runc", "python3", "ip", "iptables", "nft"],
    synproxy: true,
};

fn daemonset_file() -> std::path::PathBuf {
    workspace().join("deploy/kubernetes/daemonset.yaml")
}

/// The DaemonSet's (only) container.
fn agent_container(daemonset: &Value) -> &Value {
    &daemonset["spec"]["template"]["spec"]["containers"][0]
}

/// The capability table's (docs/operations.md) row `features`, as the names the container
/// runtime takes (`CAP_SYS_ADMIN` -> `SYS_ADMIN`).
fn readme_row(features: &str) -> BTreeSet<String> {
    caps::readme_row(features)
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect()
}

#[test]
fn daemonset_validates_and_grants_the_capability_table_row() {
    require!(MANIFEST_NEEDS.check());
    let venv = validator_venv().unwrap_or_else(|e| panic!("{e:#}"));
    let out = std::process::Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .arg(daemonset_file())
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    for resource in ["namespace", "daemonset", "service"] {
        assert!(
            report.contains(&format!("passed for resource {resource}/synproxy-agent")),
            "{resource} not validated:\n{report}"
        );
    }
    assert!(
        !report.contains("ERROR") && !report.contains("WARN"),
        "{report}"
    );

    let docs = yaml_documents(&venv, &daemonset_file()).unwrap_or_else(|e| panic!("{e:#}"));
    let daemonset = document(&docs, "DaemonSet").unwrap_or_else(|e| panic!("{e:#}"));
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "/proc/net is the pod's own otherwise"
    );
    assert_eq!(pod["hostPID"], true, "--netns all reads /proc/PID/ns/net");
    let container = agent_container(daemonset);
    let security = &container["securityContext"];
    assert_eq!(strings(security, "/capabilities/drop"), ["ALL"]);
    // As uid 0 the agent owns tracefs: the row's CAP_DAC_OVERRIDE is not needed.
    let mut want = readme_row("eBPF `--netns all`");
    assert!(
        want.remove("DAC_OVERRIDE"),
        "the table's row changed: {want:?}"
    );
    let granted: BTreeSet<String> = strings(security, "/capabilities/add").into_iter().collect();
    assert_eq!(
        granted, want,
        "capabilities granted vs the documented table"
    );
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "no {kind}.{resource}"
            );
        }
    }
    // The probes, the scrape annotation and the Service all use the port the
    // agent listens on.
    let args = strings(container, "/args");
    let listen = args
        .iter()
        .position(|a| a == "--prometheus-listen")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("no --prometheus-listen in {args:?}"));
    let port = listen.rsplit(':').next().unwrap_or_default();
    assert_eq!(
        container["ports"][0]["containerPort"].to_string(),
        port,
        "{listen}"
    );
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port);
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let service = document(&docs, "Service").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        service["spec"]["selector"],
        daemonset["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(service["spec"]["ports"][0]["port"].to_string(), port);
    // The ServiceMonitor (a CRD: no schema in the validator) selects that
    // Service by its labels and scrapes its port by name.
    let monitor_docs = yaml_documents(
        &venv,
        &workspace().join("deploy/kubernetes/servicemonitor.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let monitor = document(&monitor_docs, "ServiceMonitor").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        monitor["metadata"]["namespace"],
        service["metadata"]["namespace"]
    );
    // /run/netns: named namespaces made after the start must reach the pod.
    let mounts = container["volumeMounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no volumeMounts"));
    let netns = mounts
        .iter()
        .find(|m| m["mountPath"] == "/run/netns")
        .unwrap_or_else(|| panic!("no /run/netns mount"));
    assert_eq!(netns["mountPropagation"], "HostToContainer");
    let tracefs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/kernel/tracing")
        .unwrap_or_else(|| panic!("no tracefs mount"));
    assert_ne!(tracefs["readOnly"], true, "kprobe events are written there");
}

/// Real connections (and bare ACKs) through SYNPROXY in a fresh namespace pair.
struct Traffic {
    connections: Connections,
}

impl Traffic {
    fn drive(tools: &Tools, flavour: Flavour, connections: u64, bad_acks: u32) -> Self {
        let connections = Connections::open(tools, None, flavour, connections);
        let topo = &connections.topo;
        // Bare ACKs without a connection: each a failed cookie check.
        let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)
            .unwrap_or_else(|e| panic!("{e:#}"));
        for i in 0..bad_acks {
            let seg = TcpSegment::to_protected(40_000 + i as u16, 1000 + i, 7 + i, ACK);
            tx.send(topo.srv4.into(), &seg)
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        Self { connections }
    }
}

/// Polls the agent's /metrics until every counter of `netns` equals the
/// kernel's (read again each time), or fails after `deadline` with the last
/// difference.
fn wait_equal(addr: &str, traffic: &Traffic, deadline: Duration) {
    let netns = traffic.connections.topo.srv.name();
    let started = Instant::now();
    loop {
        let kernel =
            proc_counters::read(&traffic.connections.topo.srv).unwrap_or_else(|e| panic!("{e:#}"));
        let exposition = http_get(addr, "/metrics", None).map(|(_, _, body)| body);
        let mut diff = Vec::new();
        match &exposition {
            Ok(text) => {
                for counter in Counter::ALL {
                    let name = format!("synproxy_{}_total", counter.name());
                    let got = synproxy_tests::container::metric_by_netns(text, &name, netns);
                    if got != Some(kernel.get(counter.name())) {
                        diff.push(format!(
                            "{name}: agent {got:?}, kernel {}",
                            kernel.get(counter.name())
                        ));
                    }
                }
            }
            Err(e) => diff.push(format!("{e:#}")),
        }
        if diff.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "netns {netns} after {deadline:?}: {}",
            diff.join("; ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `podman run` arguments for the DaemonSet's pod spec: its namespaces,
/// capabilities, security settings and mounts.
fn pod_settings(daemonset: &Value) -> Vec<String> {
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = agent_container(daemonset);
    let security = &container["securityContext"];
    let mut args: Vec<String> = Vec::new();
    if pod["hostNetwork"] == true {
        args.extend(["--network".into(), "host".into()]);
    }
    if pod["hostPID"] == true {
        args.extend(["--pid".into(), "host".into()]);
    }
    for cap in strings(security, "/capabilities/drop") {
        args.extend(["--cap-drop".into(), cap]);
    }
    for cap in strings(security, "/capabilities/add") {
        args.extend(["--cap-add".into(), cap]);
    }
    if security["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if security["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if let Some(uid) = security["runAsUser"].as_u64() {
        args.extend(["--user".into(), uid.to_string()]);
    }
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let host = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("not a hostPath volume: {volume}"));
        let target = mount["mountPath"].as_str().unwrap_or_default();
        let mut options = vec![if mount["readOnly"] == true {
            "ro"
        } else {
            "rw"
        }];
        if mount["mountPropagation"] == "HostToContainer" {
            options.push("rslave");
        }
        args.extend([
            "--volume".into(),
            format!("{host}:{target}:{}", options.join(",")),
        ]);
    }
    args
}

#[test]
fn image_under_podman_reports_the_kernel_totals() {
    require!(CONTAINER_NEEDS.check());
    let archive = image_archive();
    if !archive.is_file() {
        require!(skip_or_fail(&format!(
            "container tests need the image {}: run `cargo xtask image` (cargo xtask test does)",
            archive.display()
        )));
    }
    let venv = validator_venv().unwrap_or_else(|e| panic!("{e:#}"));
    let docs = yaml_documents(&venv, &daemonset_file()).unwrap_or_else(|e| panic!("{e:#}"));
    let daemonset = document(&docs, "DaemonSet").unwrap_or_else(|e| panic!("{e:#}"));
    let container = agent_container(daemonset);
    let image = container["image"].as_str().unwrap_or_default();

    let tools = Tools::default();
    // Before the agent starts: connections, and bare ACKs for cookie_invalid.
    let before = Traffic::drive(&tools, Flavour::Xt, 3, 5);

    let podman = Podman::new(image_dir().join(format!("test-{}", std::process::id())))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let loaded = podman
        .run(&["load", "--quiet", "--input", &archive.to_string_lossy()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        loaded.contains(image),
        "{image} is not in the archive: {loaded}"
    );

    // The manifest's arguments, on a free loopback port (the host's 10816 may
    // be taken) and sampling every 500 ms instead of 10 s.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent_args = strings(container, "/args");
    let listen = agent_args
        .iter()
        .position(|a| a == "--prometheus-listen")
        .unwrap_or_else(|| panic!("no --prometheus-listen in {agent_args:?}"));
    agent_args[listen + 1] = addr.clone();
    agent_args.extend(["--interval".into(), "500ms".into()]);

    let name = format!("spx-ctr-{}", std::process::id());
    let mut run: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        name.clone(),
    ];
    // The runtime cannot raise rlimits above the host's without
    // CAP_SYS_RESOURCE (dropped): limits below any host's.
    run.extend(
        [
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]
        .map(String::from),
    );
    run.extend(["--env".into(), "SYNPROXY_AGENT_HOSTNAME=test-node".into()]);
    run.extend(pod_settings(daemonset));
    run.push(image.to_string());
    run.extend(agent_args);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    eprintln!("podman {}", run.join(" "));
    let started = Instant::now();
    podman.run(&run).unwrap_or_else(|e| panic!("{e:#}"));
    let logs = || {
        run_ok(podman.command().args(["logs", &name]))
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("{e:#}"))
    };

    // The readiness probe's request.
    let deadline = Duration::from_secs(60);
    while !matches!(http_get(&addr, "/", None), Ok((200, _, _))) {
        assert!(
            started.elapsed() < deadline,
            "no answer on http://{addr}/ after {deadline:?}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("container ready after {:?}", started.elapsed());
    wait_equal(&addr, &before, Duration::from_secs(30));

    // A namespace created while the agent runs reaches it through the mount's
    // propagation, under its name.
    let after = Traffic::drive(&tools, Flavour::Nft, 2, 3);
    wait_equal(&addr, &after, Duration::from_secs(30));
    let (_, _, text) = http_get(&addr, "/metrics", None).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        text.contains("synproxy_agent_namespaces{state=\"failed\"} 0"),
        "a namespace could not be read:\n{text}"
    );

    // Memory against the manifest's limit.
    let pid = podman
        .run(&["inspect", "--format", "{{.State.Pid}}", &name])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = std::fs::read_to_string(Path::new("/proc").join(&pid).join("status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    eprintln!("agent RSS in the container: {rss_kib} KiB");
    let limit = container["resources"]["limits"]["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Mi"))
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("memory limit not in Mi"));
    assert!(
        rss_kib < limit * 1024 / 2,
        "RSS {rss_kib} KiB vs limit {limit} MiB"
    );

    // Stopped as Kubernetes does (SIGTERM): exit 0 within the grace period.
    podman
        .run(&["stop", "--time", "10", &name])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let exit = podman
        .run(&["inspect", "--format", "{{.State.ExitCode}}", &name])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = logs();
    eprintln!("{log}");
    assert_eq!(exit, "0", "exit status:\n{log}");
    assert!(
        log.contains("capabilities after start-up"),
        "no capability line:\n{log}"
    );
    assert!(
        !log.to_lowercase().contains("missing capabilit"),
        "a capability the features need is missing:\n{log}"
    );
    drop(podman);
    drop(after);
    drop(before);
}

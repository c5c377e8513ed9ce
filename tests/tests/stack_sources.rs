//! The TCP stack's and conntrack's counters (the `nstat` and `conntrack`
//! lines) of a namespace with real traffic, against the files read inside
//! it at the same moment, `nstat -asz` (iproute2) and `conntrack -S` / `-C`
//! run inside it; and each source turned off by its flag or variable. Need
//! root, iproute2, iptables and conntrack; skipped with a message when
//! missing, unless CI=true.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use synproxy_tests::harness::Needs;
use synproxy_tests::netns::{next_seq, run_in};
use synproxy_tests::require;
use synproxy_tests::stack_compare::{agent, assert_equal_to_kernel, in_ns, run};

const NEEDS: Needs = Needs {
    what: "stack source tests",
    root: true,
    programs: &["ip", "iptables", "nstat", "conntrack"],
    synproxy: true,
};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Connections over the namespace's loopback: one whose conntrack entry is
/// flushed before it sends again (with `nf_conntrack_tcp_loose=0` its next
/// segments are INVALID), then five completed and one refused.
fn drive_traffic(ns: &str) {
    run_in(ns, || {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        {
            let mut client = TcpStream::connect(addr)?;
            let (mut server, _) = listener.accept()?;
            // Children inherit this thread's namespace.
            let flush = Command::new("conntrack").arg("-F").output()?;
            anyhow::ensure!(flush.status.success(), "conntrack -F: {flush:?}");
            client.write_all(b"y")?;
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte)?;
        }
        for _ in 0..5 {
            let mut client = TcpStream::connect(addr)?;
            let (mut server, _) = listener.accept()?;
            client.write_all(b"x")?;
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte)?;
        }
        // Nothing listens on port 1 of a fresh namespace: refused (RST).
        anyhow::ensure!(
            TcpStream::connect("127.0.0.1:1").is_err(),
            "port 1 answered"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("traffic in {ns}: {e:#}"));
}

#[test]
fn stack_counters_equal_the_kernels_and_each_source_turns_off() {
    require!(NEEDS.check());
    let name = format!("spx-stack-{}-{}", std::process::id(), next_seq());
    run("ip", &["netns", "add", &name]);
    let ns = Ns(name);
    let ns = ns.0.as_str();
    run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    // A rule that needs conntrack: its hooks are registered in this
    // namespace from now on (INVALID packets still pass).
    in_ns(
        ns,
        &[
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "ACCEPT",
        ],
    );
    in_ns(
        ns,
        &[
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose",
        ],
    );
    drive_traffic(ns);

    let agent_values = assert_equal_to_kernel(ns);

    // The traffic is in there: opens, the refusal, the table, the INVALID segments.
    let get = |key: &str| agent_values.get(key).copied().unwrap_or_default();
    assert!(get("snmp.TcpActiveOpens") >= 6, "{agent_values:?}");
    assert!(get("snmp.TcpPassiveOpens") >= 6, "{agent_values:?}");
    assert!(get("snmp.TcpAttemptFails") >= 1, "{agent_values:?}");
    assert!(get("snmp.TcpOutRsts") >= 1, "{agent_values:?}");
    assert!(get("conntrack.ip_conntrack_count") >= 5, "{agent_values:?}");
    assert!(get("conntrack.invalid") >= 1, "{agent_values:?}");

    // Each source off, by flag and by variable.
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        agent(ns, &["--no-nstat"], &[]).1,
        set(&["conntrack", "synproxy"])
    );
    assert_eq!(
        agent(ns, &["--no-conntrack"], &[]).1,
        set(&["nstat", "synproxy"])
    );
    assert_eq!(
        agent(
            ns,
            &[],
            &[
                ("SYNPROXY_AGENT_NO_NSTAT", "true"),
                ("SYNPROXY_AGENT_NO_CONNTRACK", "true")
            ]
        )
        .1,
        set(&["synproxy"])
    );
}

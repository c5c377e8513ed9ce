//! Named network namespaces (iproute2 `ip netns`), running code inside them, and
//! the two-namespace veth topology every scenario uses.

use crate::tools::{self, Tools};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Per-process sequence for unique netns/interface names and subnets.
static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Move the calling thread into the netns bound at /run/netns/NAME.
/// Only this thread changes netns; children it spawns inherit it.
pub fn enter(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns() only reads the fd, which `file` keeps open for the call;
    // CLONE_NEWNET affects the calling thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
    }
    Ok(())
}

/// Run `f` on a fresh thread that first enters netns `name`. The thread ends with
/// `f`, so the caller's netns never changes. Sockets created inside keep the netns.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T> {
            enter(name)?;
            f()
        });
        handle
            .join()
            .map_err(|_| anyhow!("thread inside netns {name} panicked"))?
    })
}

/// A named netns. Deleted on drop only if this process created it.
pub struct Netns {
    name: String,
    owned: bool,
    ip: PathBuf,
}

impl Netns {
    pub fn create(tools: &Tools, name: &str) -> Result<Self> {
        tools::run(&tools.ip, &["netns", "add", name])?;
        Ok(Netns {
            name: name.to_string(),
            owned: true,
            ip: tools.ip.clone(),
        })
    }

    /// Use a netns someone else created (kept on drop).
    pub fn existing(tools: &Tools, name: &str) -> Result<Self> {
        let path = Path::new("/run/netns").join(name);
        if !path.exists() {
            bail!("netns {name} does not exist ({} missing)", path.display());
        }
        Ok(Netns {
            name: name.to_string(),
            owned: false,
            ip: tools.ip.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn owned(&self) -> bool {
        self.owned
    }

    pub fn run<T: Send, F: FnOnce() -> Result<T> + Send>(&self, f: F) -> Result<T> {
        run_in(&self.name, f)
    }

    /// Write a sysctl of this netns through /proc/sys (per-netns for net.*).
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| {
            std::fs::write(&path, value).with_context(|| format!("write {value} to {path}"))
        })
        .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = tools::run(&self.ip, &["netns", "del", &self.name]) {
                eprintln!("# warning: cleanup of netns {}: {e:#}", self.name);
            }
        }
    }
}

/// Client and server netns joined by a veth pair with IPv4 and IPv6 addresses.
pub struct Topology {
    // Declared first so the server-side veth is removed before the netns go.
    pub cli_if: String,
    pub srv_if: String,
    pub cli4: Ipv4Addr,
    pub srv4: Ipv4Addr,
    pub cli6: Ipv6Addr,
    pub srv6: Ipv6Addr,
    pub cli: Netns,
    pub srv: Netns,
    ip: PathBuf,
}

impl Topology {
    /// Fresh client netns; fresh server netns unless `existing_srv` names one to reuse.
    pub fn create(tools: &Tools, existing_srv: Option<&str>) -> Result<Self> {
        let pid = std::process::id();
        let seq = next_seq();
        let cli = Netns::create(tools, &format!("spx-{pid}-{seq}-cli"))?;
        let srv = match existing_srv {
            Some(name) => Netns::existing(tools, name)?,
            None => Netns::create(tools, &format!("spx-{pid}-{seq}-srv"))?,
        };
        // Distinct subnet per topology: a reused server netns may still hold the
        // previous (asynchronously destroyed) veth end for a moment.
        let x = (seq % 250 + 1) as u8;
        let topo = Topology {
            cli_if: format!("sp{}c{}", pid % 100_000, seq % 1000),
            srv_if: format!("sp{}s{}", pid % 100_000, seq % 1000),
            cli4: Ipv4Addr::new(10, 77, x, 1),
            srv4: Ipv4Addr::new(10, 77, x, 2),
            cli6: Ipv6Addr::new(0xfd00, 0x77, u16::from(x), 0, 0, 0, 0, 1),
            srv6: Ipv6Addr::new(0xfd00, 0x77, u16::from(x), 0, 0, 0, 0, 2),
            cli,
            srv,
            ip: tools.ip.clone(),
        };
        topo.configure()?;
        Ok(topo)
    }

    fn ip_in(&self, ns: &Netns, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", ns.name()];
        full.extend_from_slice(args);
        tools::run(&self.ip, &full)
    }

    fn configure(&self) -> Result<()> {
        let (cli, srv) = (&self.cli, &self.srv);
        // Both ends would get ifindex 2 in fresh netns; with ifindex == iflink the
        // kernel treats the carrier change as non-urgent and activates the link up to
        // 1 s later (linkwatch), dropping early packets. A distinct index avoids it.
        self.ip_in(
            cli,
            &[
                "link",
                "add",
                &self.cli_if,
                "index",
                "4242",
                "type",
                "veth",
                "peer",
                "name",
                &self.srv_if,
                "netns",
                srv.name(),
            ],
        )?;
        for (ns, ifname, a4, a6) in [
            (cli, &self.cli_if, self.cli4, self.cli6),
            (srv, &self.srv_if, self.srv4, self.srv6),
        ] {
            self.ip_in(ns, &["addr", "add", &format!("{a4}/24"), "dev", ifname])?;
            self.ip_in(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{a6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ],
            )?;
            self.ip_in(ns, &["link", "set", "lo", "up"])?;
            self.ip_in(ns, &["link", "set", ifname, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.srv.owned() {
            // Removing our end synchronously frees the reused server netns at once.
            if let Err(e) = self.ip_in(&self.srv, &["link", "del", &self.srv_if]) {
                eprintln!("# warning: cleanup of {}: {e:#}", self.srv_if);
            }
        }
    }
}

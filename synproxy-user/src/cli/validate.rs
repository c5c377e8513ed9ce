//! Checks of the parsed command line that need more than one flag or the
//! filesystem.

use super::{parse_listen_addr, Cli, NetnsSelection};
use crate::ranking::TopConfig;
use crate::sources::proc::netns_policy::NetnsPolicy;

impl Cli {
    /// Checks that need more than one flag or the filesystem; one-line errors
    /// naming the flag.
    pub fn validate(&self) -> Result<NetnsSelection, String> {
        validate_proc_root(&self.proc_root)?;
        let selection = netns_selection(
            &self.netns,
            NetnsPolicy {
                max: self.netns_max,
                include_user_owned: self.netns_include_user_owned,
            },
        )?;
        if selection != NetnsSelection::Own && self.tags.iter().any(|(k, _)| k == "netns") {
            return Err("--tag netns=...: the netns tag is set by --netns".into());
        }
        if let Some(listen) = &self.prometheus_listen {
            if self.once {
                return Err(format!(
                    "--prometheus-listen {listen}: not with --once (there is nothing to scrape after one sample)"
                ));
            }
            parse_listen_addr(listen)
                .map_err(|e| format!("--prometheus-listen {listen:?}: {e}"))?;
        }
        if let (Some(file), None) = (&self.web_config_file, &self.prometheus_listen) {
            return Err(format!(
                "--web-config-file {}: needs --prometheus-listen",
                file.display()
            ));
        }
        self.validate_influx_flags()?;
        if let Some(host) = &self.hostname {
            if host.is_empty() || host.chars().any(char::is_control) {
                return Err(format!(
                    "--hostname {host:?}: must be non-empty, without control characters"
                ));
            }
        }
        Ok(selection)
    }
}

impl Cli {
    /// `--top`, `--top-prefix-v4` and `--top-prefix-v6`.
    pub fn top_config(&self) -> TopConfig {
        let (v4, v6) = (self.top_prefix_v4, self.top_prefix_v6);
        TopConfig::new(self.top, v4, v6, self.top_map_entries)
            .with_ports(self.top_ports, self.top_ports_map_entries)
    }

    /// Whether line protocol goes to stdout: always without a network
    /// output (the Telegraf drop-in), otherwise only with `--stdout`.
    pub fn stdout_enabled(&self) -> bool {
        self.stdout || (self.prometheus_listen.is_none() && self.influx_url.is_none())
    }

    /// Which InfluxDB flags go together: the URL with either the 1.x database
    /// or the 2.x bucket and organization. The URL itself, the token file and
    /// the environment's credentials are checked when the writer is set up.
    fn validate_influx_flags(&self) -> Result<(), String> {
        let v2 = [
            ("--influx-bucket", &self.influx_bucket),
            ("--influx-org", &self.influx_org),
        ];
        let Some(url) = &self.influx_url else {
            let stray = [("--influx-db", &self.influx_db)]
                .into_iter()
                .chain(v2)
                .find_map(|(flag, value)| value.as_ref().map(|_| flag))
                .or(self
                    .influx_token_file
                    .as_ref()
                    .map(|_| "--influx-token-file"));
            return match stray {
                Some(flag) => Err(format!("{flag}: needs --influx-url")),
                None => Ok(()),
            };
        };
        for (flag, value) in [("--influx-db", &self.influx_db)].into_iter().chain(v2) {
            if let Some(value) = value {
                if value.is_empty() || value.chars().any(char::is_control) {
                    return Err(format!(
                        "{flag} {value:?}: must be non-empty, without control characters"
                    ));
                }
            }
        }
        match (&self.influx_db, &self.influx_bucket, &self.influx_org) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => Ok(()),
            (Some(_), Some(_), _) => Err(
                "--influx-db with --influx-bucket: choose the 1.x API (--influx-db) or the 2.x API (--influx-bucket and --influx-org)".into(),
            ),
            (Some(_), None, Some(_)) => Err(
                "--influx-org is for the 2.x API (with --influx-bucket), not with --influx-db".into(),
            ),
            (None, Some(_), None) => Err("--influx-bucket needs --influx-org".into()),
            (None, None, Some(_)) => Err("--influx-org needs --influx-bucket".into()),
            (None, None, None) => Err(format!(
                "--influx-url {url}: needs --influx-db DB (InfluxDB 1.x) or --influx-bucket B --influx-org O (2.x)"
            )),
        }
    }
}

pub(super) fn validate_proc_root(proc_root: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(proc_root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "--proc-root {}: not a directory",
            proc_root.display()
        )),
        Err(e) => Err(format!(
            "--proc-root {}: {}",
            proc_root.display(),
            describe_io(&e)
        )),
    }
}

/// `--netns` values: none (the own namespace), names, or `all`.
pub(super) fn netns_selection(
    netns: &[String],
    policy: NetnsPolicy,
) -> Result<NetnsSelection, String> {
    if netns.is_empty() {
        return Ok(NetnsSelection::Own);
    }
    if netns.iter().any(|n| n == "all") {
        if netns.len() > 1 {
            return Err("--netns all cannot be combined with namespace names".into());
        }
        return Ok(NetnsSelection::All(policy));
    }
    let mut names = Vec::new();
    for name in netns {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.chars().any(char::is_control)
        {
            return Err(format!(
                "--netns {name:?}: not a namespace name (expected a name from `ip netns list`, or all)"
            ));
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(NetnsSelection::Named(names))
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

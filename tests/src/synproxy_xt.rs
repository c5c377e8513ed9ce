//! The three xt rules that protect a TCP port with SYNPROXY, as arguments
//! for iptables/ip6tables. Shared by the tests crate and xtask's soak, which
//! compiles this file into itself (so std only).

/// For `port` on `ifname`: SYNs skip conntrack (raw table), SYNPROXY answers
/// what conntrack finds INVALID or UNTRACKED, and what is still INVALID
/// afterwards is dropped.
pub fn synproxy_xt_rules(ifname: &str, port: u16) -> [Vec<String>; 3] {
    let port = port.to_string();
    let tcp_port = ["-i", ifname, "-p", "tcp", "--dport", &port];
    let rule = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(&tcp_port)
            .chain(tail)
            .map(|arg| arg.to_string())
            .collect()
    };
    let input = ["-A", "INPUT"];
    [
        rule(
            &["-t", "raw", "-A", "PREROUTING"],
            &["--syn", "-j", "CT", "--notrack"],
        ),
        rule(
            &input,
            &[
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID,UNTRACKED",
                "-j",
                "SYNPROXY",
                "--sack-perm",
                "--timestamp",
                "--wscale",
                "7",
                "--mss",
                "1460",
            ],
        ),
        rule(
            &input,
            &["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_as_the_documented_commands() {
        let [raw, synproxy, drop] = synproxy_xt_rules("veth0", 8080);
        assert_eq!(
            raw.join(" "),
            "-t raw -A PREROUTING -i veth0 -p tcp --dport 8080 --syn -j CT --notrack"
        );
        assert_eq!(
            synproxy.join(" "),
            "-A INPUT -i veth0 -p tcp --dport 8080 -m conntrack --ctstate INVALID,UNTRACKED \
             -j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460"
        );
        assert_eq!(
            drop.join(" "),
            "-A INPUT -i veth0 -p tcp --dport 8080 -m conntrack --ctstate INVALID -j DROP"
        );
    }
}

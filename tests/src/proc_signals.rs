//! A process's signal masks from `/proc/PID/status`. Shared by the tests
//! crate, the agent's CLI tests and xtask's soak, which compile this file
//! into themselves (so std and libc only).

/// Whether `signal` is set in any of the masks `keys` (`SigBlk:`,
/// `SigCgt:`, `SigIgn:` ...) of process `pid`; false once it is gone.
pub fn signal_in(pid: u32, keys: &[&str], signal: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| signal_in_status(&status, keys, signal))
}

/// Whether `pid` runs the agent (after exec: spawning blocks every signal in
/// the child until then) and blocks or catches SIGTERM: the agent's first
/// statement blocks it until its handlers are installed.
pub fn agent_takes_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status.lines().any(|l| l == "Name:\tsynproxy-agent")
            && signal_in_status(&status, &["SigBlk:", "SigCgt:"], libc::SIGTERM)
    })
}

fn signal_in_status(status: &str, keys: &[&str], signal: i32) -> bool {
    let Some(bit) = u32::try_from(signal - 1)
        .ok()
        .and_then(|shift| 1u64.checked_shl(shift))
    else {
        return false;
    };
    keys.iter().any(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|mask| mask & bit != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_counts_in_any_of_the_masks_asked_for() {
        let status = "Name:\tx\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\n\
                      SigCgt:\t0000000000004000\n";
        assert!(signal_in_status(status, &["SigCgt:"], 15));
        assert!(signal_in_status(status, &["SigBlk:", "SigIgn:"], 13));
        assert!(!signal_in_status(status, &["SigBlk:"], 15));
        assert!(!signal_in_status(status, &["SigCgt:"], 0));
    }
}

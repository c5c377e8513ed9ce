//! The VM suite's check names, defined once: the guest's init runs them in
//! this order, `synproxy-scenario --list` prints them and `cargo xtask vm-test
//! --check NAME` accepts only these. No dependencies: xtask compiles this file
//! into itself.

/// Every check `cargo xtask vm-test --check NAME` can select (module-late
/// includes module-reload).
pub const CHECKS: &[&str] = &[
    "module-late",
    "clean-state",
    "matrix-xt-ipv4",
    "matrix-xt-ipv6",
    "matrix-nft-ipv4",
    "matrix-nft-ipv6",
    "iptables-nft-ipv4",
    "iptables-nft-ipv6",
    "flood-shutdown",
    "top-sources",
    "top-ports",
    "attack-detection",
    "sustained",
    "lifecycle",
    "non-root",
    "fentry-flood",
    "fentry-sustained",
    "fentry-matrix-xt-ipv4",
    "fentry-non-root",
    "fentry-lifecycle",
    "fentry-module",
    "top-view",
    "user-netns",
    "ebpf-cost",
];

/// `Err` with a one-line message naming the known checks when `name` is not one.
pub fn validate(name: &str) -> Result<(), String> {
    if CHECKS.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "unknown check {name:?}; known checks: {}",
            CHECKS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_an_unknown_one_lists_them_all() {
        let mut sorted = CHECKS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), CHECKS.len());
        assert_eq!(validate("sustained"), Ok(()));
        let e = validate("sustain").unwrap_err();
        assert!(
            e.starts_with("unknown check \"sustain\"; known checks: module-late, clean-state, ")
        );
        assert!(e.ends_with(", user-netns, ebpf-cost") && !e.contains('\n'));
    }
}

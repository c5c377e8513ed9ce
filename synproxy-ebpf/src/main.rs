//! Kernel-side programs: kprobes/kretprobes on the SYNPROXY paths that count each
//! counter increment of `/proc/net/stat/synproxy` one to one, per (network
//! namespace, family, counter), in memory-mapped arrays. See `probes.rs` and the
//! README ("How the events are counted") for the derivation.
//!
//! Built for `bpfel-unknown-none` by synproxy-user/build.rs; on the host this is an
//! empty binary so that `cargo build --workspace` stays harmless.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds: core::sync::atomic has no read-modify-write on the BPF target.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// bpf_probe_read_kernel is a GPL-only helper.
#[cfg(target_arch = "bpf")]
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}

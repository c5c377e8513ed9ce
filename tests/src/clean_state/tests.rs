//! Unit tests of the clean-state precondition.

use super::*;

fn module(refcnt: i64, used_by: usize) -> Module {
    Module {
        refcnt,
        used_by,
        state: "Live".into(),
    }
}

fn state() -> State {
    let mut s = State::default();
    s.netns
        .insert("net:[1]".into(), vec!["pid 1 (init): its netns".into()]);
    s.modules.insert("nf_synproxy_core".into(), module(3, 3));
    s.modules.insert("ipt_SYNPROXY".into(), module(0, 0));
    s.bpf.insert((Kind::Btf, 1), "vmlinux".into());
    s
}

#[test]
fn the_baseline_round_trips_and_a_clean_state_has_no_leftover() {
    let s = state();
    let b = Baseline::from_state(&s);
    assert_eq!(Baseline::parse(&b.to_text()).unwrap(), b);
    assert!(b
        .leftovers(&s)
        .iter()
        .all(|l| l.key.starts_with("process:")));
}

#[test]
fn every_kind_of_leftover_is_named() {
    let b = Baseline::from_state(&state());
    let mut s = state();
    s.named.insert("srv-12-0".into());
    s.netns.insert(
        "net:[2]".into(),
        vec!["mount /run/netns/srv-12-0 in mnt:[9] of pid 7 (x)".into()],
    );
    s.modules.insert("ipt_SYNPROXY".into(), module(1, 0));
    // Held by a program beside its three users.
    s.modules.insert("nf_synproxy_core".into(), module(4, 3));
    s.kprobe_events.insert("p:synproxy_agent/e1 f".into());
    s.bpf.insert((Kind::Prog, 40), "spxf_synack4".into());
    let keys: Vec<String> = b
        .leftovers(&s)
        .into_iter()
        .map(|l| l.key)
        .filter(|k| !k.starts_with("process:"))
        .collect();
    assert_eq!(
        keys,
        [
            "netns:srv-12-0",
            "netns:net:[2]",
            "module:ipt_SYNPROXY:1/0",
            "module:nf_synproxy_core:1/0",
            "kprobe:p:synproxy_agent/e1",
            "bpf-program:40:spxf_synack4",
        ]
    );
    s.modules.remove("ipt_SYNPROXY");
    assert!(b
        .leftovers(&s)
        .iter()
        .any(|l| l.key == "module:ipt_SYNPROXY:unloaded"));
}

#[test]
fn modules_loaded_later_join_the_baseline_with_their_first_count() {
    let mut b = Baseline::from_state(&state());
    let mut s = state();
    s.modules.insert("nft_synproxy".into(), module(0, 0));
    // A new user of nf_synproxy_core: one more reference, not a leftover.
    s.modules.insert("nf_synproxy_core".into(), module(4, 4));
    assert_eq!(b.add_new_modules(&s), ["nft_synproxy=0"]);
    assert!(b
        .leftovers(&s)
        .iter()
        .all(|l| l.key.starts_with("process:")));
    s.modules.insert("nft_synproxy".into(), module(2, 0));
    assert!(b.add_new_modules(&s).is_empty());
    assert!(b
        .leftovers(&s)
        .iter()
        .any(|l| l.key == "module:nft_synproxy:2/0"));
}

#[test]
fn proc_modules_users_are_not_counted_as_other_references() {
    let m = parse_modules(
        "nf_synproxy_core 28672 5 ipt_SYNPROXY,ip6t_SYNPROXY,nft_synproxy, Live 0x0000000000000000\n\
         ipt_SYNPROXY 12288 1 - Live 0x0000000000000000\n\
         veth 40960 0 - Unloading 0x0000000000000000\n",
    );
    assert_eq!(m["nf_synproxy_core"].other_refs(), 2);
    assert_eq!(m["ipt_SYNPROXY"].other_refs(), 1);
    assert_eq!(m["veth"].state, "Unloading");
}

/// A network namespace only a thread holds is found, with its holder.
#[test]
fn a_namespace_held_only_by_a_thread_is_found() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: plain syscall; only this thread's netns changes.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        let ns = (rc == 0).then(|| read_link(Path::new("/proc/thread-self/ns/net")));
        let _ = tx.send(ns.flatten());
        let _ = done_rx.recv();
    });
    let ns = rx
        .recv()
        .unwrap()
        .expect("unshare(CLONE_NEWNET) (the tests run as root)");
    let held = held_netns();
    let _ = done_tx.send(());
    thread.join().unwrap();
    let holders = held.get(&ns).expect("the thread's namespace listed");
    let me = format!("pid {} (", std::process::id());
    assert!(
        holders
            .iter()
            .any(|h| h.starts_with(&me) && h.ends_with("its netns")),
        "{holders:?}"
    );
}

#[test]
fn a_bad_baseline_line_is_an_error_naming_it() {
    let e = Baseline::parse("module\tx\tnot-a-number\n").unwrap_err();
    assert!(format!("{e:#}").contains("baseline line 1"));
}

//! `synproxy-agent top` in a tmux pane, ended by SIGHUP and by SIGQUIT (sent
//! to it, as a hung-up terminal or a user would): exit 0, the alternate
//! screen left, the cursor shown, the terminal modes as `stty -g` saw them
//! before, and a typed command echoes. Reads a proc root of its own (no
//! kernel SYNPROXY needed); needs `tmux`.

use synproxy_tests::harness::agent_binary;
use synproxy_tests::tmux::Tmux;

/// `tmux` in PATH: required on CI, a skip with a message elsewhere.
fn tmux_available() -> bool {
    let found = std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg = "the top signal test needs tmux in PATH (apt-get install tmux; cargo xtask test installs it)";
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{msg} (CI=true, so this is a failure)"
        );
        eprintln!("SKIPPED: {msg}");
    }
    found
}

const STAT: &str =
    "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n\
                    00000000\t00000007\t00000000\t00000003\t00000000\t00000000\n";

fn or_panic<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn top_ends_on_sighup_and_sigquit_with_the_terminal_restored() {
    if !tmux_available() {
        return;
    }
    let agent = agent_binary();
    let root = std::env::temp_dir().join(format!("spx-top-signals-{}", std::process::id()));
    std::fs::create_dir_all(root.join("net/stat")).unwrap();
    std::fs::write(root.join("net/stat/synproxy"), STAT).unwrap();
    let tmux = or_panic(Tmux::start(120, 40));
    let dir = tmux.dir().display().to_string();
    let timeout = std::time::Duration::from_secs(20);
    for (run, signal) in [("hup", libc::SIGHUP), ("quit", libc::SIGQUIT)] {
        or_panic(tmux.type_line(&format!(
            "cd {dir} && stty -g > {run}.before; {} top --no-ebpf --interval 100ms --proc-root {}; echo \"{run} exited: $?\"; stty -g > {run}.after; echo {run}-checked",
            agent.display(),
            root.display()
        )));
        or_panic(tmux.wait_for(&format!("{run}: the view"), timeout, |s| {
            (s.contains("synproxy-agent top |") && s.contains("syn_received")).then_some(())
        }));
        or_panic(tmux.signal_agent(signal));
        let marker = format!("{run}-checked");
        let screen = or_panic(tmux.wait_for(&marker, timeout, |s| {
            s.lines().any(|l| l.trim() == marker).then(|| s.to_string())
        }));
        assert!(
            screen.contains(&format!("{run} exited: 0")),
            "{run}: exit status:\n{screen}"
        );
        assert!(
            !screen.contains("synproxy-agent top |"),
            "{run}: the view is still on the screen:\n{screen}"
        );
        assert_eq!(
            or_panic(tmux.display("#{alternate_on}")),
            "0",
            "{run}: still on the alternate screen"
        );
        assert_eq!(
            or_panic(tmux.display("#{cursor_flag}")),
            "1",
            "{run}: cursor left hidden"
        );
        let read = |name: String| std::fs::read_to_string(tmux.dir().join(&name)).unwrap();
        let (before, after) = (read(format!("{run}.before")), read(format!("{run}.after")));
        assert!(!before.trim().is_empty(), "{run}: no stty output");
        assert_eq!(
            before, after,
            "{run}: terminal modes changed (raw mode left on?)"
        );
        // A typed command echoes and runs: the terminal is usable.
        or_panic(tmux.type_line(&format!("echo typed-{run}-$((1+1))")));
        or_panic(tmux.wait_for(
            &format!("{run}: the typed command's output"),
            timeout,
            |s| {
                let echoed = s.contains(&format!("$ echo typed-{run}-$((1+1))"));
                let ran = s.lines().any(|l| l.trim() == format!("typed-{run}-2"));
                (echoed && ran).then_some(())
            },
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
}

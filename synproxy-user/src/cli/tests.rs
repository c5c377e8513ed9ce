//! The command line's flags, values and checks.

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("0s").unwrap_err().contains("at least"));
    assert!(parse_duration("s")
        .unwrap_err()
        .contains("expected a number"));
    assert!(parse_duration("99999999999999999999999s").is_err());
}

#[test]
fn tags() {
    assert_eq!(parse_tag("dc=ams 1"), Ok(("dc".into(), "ams 1".into())));
    assert_eq!(parse_tag("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(parse_tag("novalue").is_err());
    assert!(parse_tag("=x").is_err());
    assert!(parse_tag("x=").is_err());
    assert!(parse_tag("_x=1").is_err());
    assert!(parse_tag("x=a\nb").is_err());
    assert!(parse_tag("x=a\\").is_err());
}

#[test]
fn rate_resolution_bounds() {
    let ok = cli(&["--rate-resolution", "10ms"]).expect("parses");
    assert!(ok.validate().is_ok());
    // Every duration flag takes 10ms at the finest.
    assert!(cli(&["--rate-resolution", "5ms"]).is_err());
    let err = first_line(cli(&["--rate-resolution", "2h"]).expect_err("2h is too coarse"));
    assert!(
        err.contains("for '--rate-resolution <DURATION>': \"2h\": must be between 10ms and 1h"),
        "{err}"
    );
}

fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("synproxy-agent").chain(args.iter().copied()))
}

#[test]
fn netns_selection() {
    let c = cli(&["--netns", "a", "--netns", "b,a"]).unwrap();
    assert_eq!(
        c.validate(),
        Ok(NetnsSelection::Named(vec!["a".into(), "b".into()]))
    );
    let c = cli(&["--netns", "all"]).unwrap();
    assert_eq!(
        c.validate(),
        Ok(NetnsSelection::All(NetnsPolicy {
            max: 1024,
            include_user_owned: false
        }))
    );
    let c = cli(&[
        "--netns",
        "all",
        "--netns-max",
        "3",
        "--netns-include-user-owned",
    ])
    .unwrap();
    assert_eq!(
        c.validate(),
        Ok(NetnsSelection::All(NetnsPolicy {
            max: 3,
            include_user_owned: true
        }))
    );
    for bad in ["0", "16385", "-1", "x", ""] {
        let err = cli(&[&format!("--netns-max={bad}")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--netns-max"), "{err}");
        assert!(err.contains("from 1 to 16384"), "{err}");
    }
    assert!(cli(&["--netns-max", "16384"]).is_ok());
    assert!(cli(&["--netns", "all", "--netns", "a"])
        .unwrap()
        .validate()
        .is_err());
    assert!(cli(&["--netns", "../x"]).unwrap().validate().is_err());
    assert_eq!(cli(&[]).unwrap().validate(), Ok(NetnsSelection::Own));
    let err = cli(&["--netns", "a", "--tag", "netns=x"])
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.contains("--tag netns"), "{err}");
}

#[test]
fn proc_root_errors_name_the_flag() {
    let err = cli(&["--proc-root", "/nonexistent"])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err, "--proc-root /nonexistent: no such directory");
    let err = cli(&["--proc-root", "/etc/hostname"])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err, "--proc-root /etc/hostname: not a directory");
}

#[test]
fn prometheus_listen_addresses() {
    for ok in ["127.0.0.1:10816", "[::]:10816", "[::1]:0", "0.0.0.0:80"] {
        assert!(parse_listen_addr(ok).is_ok(), "{ok}");
        let c = cli(&["--prometheus-listen", ok]).unwrap();
        assert!(c.validate().is_ok(), "{ok}");
        assert!(!c.stdout_enabled());
    }
    for bad in [
        "10816",
        "localhost:10816",
        "::1:10816",
        "127.0.0.1",
        "1.2.3.4:99999",
        "",
    ] {
        let err = cli(&["--prometheus-listen", bad])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.starts_with(&format!("--prometheus-listen {bad:?}: not an address")),
            "{err}"
        );
    }
    let err = cli(&["--once", "--prometheus-listen", "127.0.0.1:10816"])
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.starts_with("--prometheus-listen 127.0.0.1:10816: not with --once"));
    assert!(cli(&[]).unwrap().stdout_enabled());
    assert!(cli(&["--stdout"]).unwrap().stdout_enabled());
    let both = cli(&["--stdout", "--prometheus-listen", "[::1]:10816"]).unwrap();
    assert!(both.stdout_enabled());
}

/// The first line of a clap error (the rest is the `--help` hint).
fn first_line(err: clap::Error) -> String {
    err.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn top_flags() {
    let c = cli(&[]).unwrap();
    assert_eq!(c.top_config(), TopConfig::default());
    assert_eq!(
        c.top_config(),
        TopConfig {
            n: 10,
            prefix_v4: 32,
            prefix_v6: 128,
            ..TopConfig::default()
        }
    );
    let c = cli(&[
        "--top",
        "0",
        "--top-prefix-v4",
        "24",
        "--top-prefix-v6",
        "/64",
    ])
    .unwrap();
    assert_eq!(
        c.top_config(),
        TopConfig {
            n: 0,
            prefix_v4: 24,
            prefix_v6: 64,
            ..TopConfig::default()
        }
    );
    assert!(!c.top_config().enabled());
    for (args, flag) in [
        (&["--top", "1001"][..], "--top <N>"),
        (&["--top=-1"], "--top <N>"),
        (&["--top", "ten"], "--top <N>"),
        (&["--top-prefix-v4", "33"], "--top-prefix-v4 <BITS>"),
        (&["--top-prefix-v6", "129"], "--top-prefix-v6 <BITS>"),
        (&["--top-prefix-v6", "x"], "--top-prefix-v6 <BITS>"),
    ] {
        let err = first_line(cli(args).expect_err("out of range"));
        assert!(err.contains(&format!("for '{flag}'")), "{err}");
        assert!(err.contains("expected"), "{err}");
    }
}

#[test]
fn top_flags_have_agent_variables_and_top_reads_none() {
    use clap::CommandFactory;
    let cmd = Cli::command();
    for (id, var) in [
        ("top", "SYNPROXY_AGENT_TOP"),
        ("top_prefix_v4", "SYNPROXY_AGENT_TOP_PREFIX_V4"),
        ("top_prefix_v6", "SYNPROXY_AGENT_TOP_PREFIX_V6"),
    ] {
        let arg = cmd.get_arguments().find(|a| a.get_id() == id);
        assert_eq!(
            arg.and_then(|a| a.get_env()),
            Some(std::ffi::OsStr::new(var)),
            "{id}"
        );
        let sub = cmd.find_subcommand("top").expect("top command");
        let arg = sub.get_arguments().find(|a| a.get_id() == id);
        assert!(arg.is_some_and(|a| a.get_env().is_none()), "top {id}");
    }
}

#[test]
fn top_command_takes_the_top_flags() {
    let parsed = Cli::try_parse_from([
        "synproxy-agent",
        "top",
        "--top",
        "5",
        "--top-prefix-v4",
        "16",
    ])
    .unwrap();
    let Some(Command::Top(args)) = parsed.command else {
        panic!("not the top command");
    };
    assert_eq!(
        args.top_config(),
        TopConfig {
            n: 5,
            prefix_v4: 16,
            prefix_v6: 128,
            ..TopConfig::default()
        }
    );
    let err = Cli::try_parse_from(["synproxy-agent", "top", "--top-prefix-v4", "40"])
        .expect_err("out of range");
    assert!(first_line(err).contains("--top-prefix-v4"));
}

#[test]
fn once_conflicts_with_stdin_signal() {
    assert!(cli(&["--once", "--signal", "stdin"]).is_err());
    assert!(cli(&["--interval", "5x"]).is_err());
}

//! The InfluxDB flags: write URLs, flag combinations, credentials.

use super::*;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("synproxy-agent").chain(args.iter().copied()))
        .expect("flags parse")
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Option<InfluxConfig>, String> {
    let cli = cli(args);
    cli.validate()?;
    InfluxConfig::from_cli(&cli, |name| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

fn uri(args: &[&str]) -> String {
    config(args, &[])
        .expect("valid")
        .expect("configured")
        .write_uri()
        .to_string()
}

#[test]
fn write_urls() {
    assert_eq!(
        uri(&[
            "--influx-url",
            "http://127.0.0.1:8086",
            "--influx-db",
            "telegraf"
        ]),
        "http://127.0.0.1:8086/write?db=telegraf&precision=ns"
    );
    assert_eq!(
        uri(&["--influx-url", "http://h:8086/", "--influx-db", "a b&c"]),
        "http://h:8086/write?db=a%20b%26c&precision=ns"
    );
    assert_eq!(
        uri(&[
            "--influx-url",
            "https://influx.example:8086/proxy/",
            "--influx-org",
            "ops",
            "--influx-bucket",
            "net/1h"
        ]),
        "https://influx.example:8086/proxy/api/v2/write?org=ops&bucket=net%2F1h&precision=ns"
    );
    assert_eq!(
        uri(&["--influx-url", "http://[::1]:8086", "--influx-db", "d"]),
        "http://[::1]:8086/write?db=d&precision=ns"
    );
    assert!(config(&[], &[]).expect("valid").is_none());
}

#[test]
fn bad_urls_name_the_flag() {
    for (url, want) in [
        ("127.0.0.1:8086", "not a URL"),
        ("localhost", "not a URL"),
        ("ftp://h:21", "scheme \"ftp\""),
        ("http://", "not a URL"),
        ("http://u:p@h:8086", "credentials do not belong in the URL"),
        ("http://h:8086/?db=x", "no query string"),
        ("http://h:8086 x", "not a URL"),
    ] {
        let err = config(&["--influx-url", url, "--influx-db", "d"], &[]).expect_err(url);
        assert!(err.starts_with("--influx-url"), "{url}: {err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn flag_combinations() {
    let url = ["--influx-url", "http://h:8086"];
    let with = |more: &[&str]| {
        let args: Vec<&str> = url.iter().chain(more).copied().collect();
        config(&args, &[]).map(|c| c.is_some())
    };
    assert_eq!(with(&["--influx-db", "d"]), Ok(true));
    assert_eq!(
        with(&["--influx-bucket", "b", "--influx-org", "o"]),
        Ok(true)
    );
    for (more, want) in [
        (&[][..], "--influx-url http://h:8086: needs --influx-db"),
        (
            &["--influx-db", "d", "--influx-bucket", "b"][..],
            "--influx-db with --influx-bucket",
        ),
        (
            &["--influx-db", "d", "--influx-org", "o"][..],
            "--influx-org is for the 2.x API",
        ),
        (
            &["--influx-bucket", "b"][..],
            "--influx-bucket needs --influx-org",
        ),
        (
            &["--influx-org", "o"][..],
            "--influx-org needs --influx-bucket",
        ),
        (
            &["--influx-db", ""][..],
            "--influx-db \"\": must be non-empty",
        ),
    ] {
        let err = with(more).expect_err(want);
        assert!(err.starts_with(want), "{more:?}: {err}");
    }
    for stray in [
        &["--influx-db", "d"][..],
        &["--influx-bucket", "b"][..],
        &["--influx-token-file", "/x"][..],
    ] {
        let err = config(stray, &[]).map(|c| c.is_some()).expect_err("stray");
        assert!(err.ends_with(": needs --influx-url"), "{err}");
    }
    assert!(Cli::try_parse_from(["synproxy-agent", "--influx-buffer-lines", "0"]).is_err());
}

#[test]
fn stdout_goes_quiet_with_influx_unless_asked() {
    assert!(cli(&[]).stdout_enabled());
    assert!(!cli(&["--influx-url", "http://h:1", "--influx-db", "d"]).stdout_enabled());
    assert!(cli(&["--influx-url", "http://h:1", "--influx-db", "d", "--stdout"]).stdout_enabled());
}

fn auth(args: &[&str], env: &[(&str, &str)]) -> Result<Option<String>, String> {
    let mut all = vec!["--influx-url", "http://h:8086"];
    all.extend_from_slice(args);
    let config = config(&all, env)?.expect("configured");
    Ok(config
        .authorization
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()))
}

#[test]
fn credentials_from_the_environment_or_a_file() {
    let v1 = ["--influx-db", "d"];
    let v2 = ["--influx-bucket", "b", "--influx-org", "o"];
    assert_eq!(auth(&v1, &[]), Ok(None));
    assert_eq!(
        auth(&v2, &[(TOKEN_ENV, "s3cr3t")]),
        Ok(Some("Token s3cr3t".into()))
    );
    assert_eq!(
        auth(
            &v1,
            &[(USERNAME_ENV, "Aladdin"), (PASSWORD_ENV, "open sesame")]
        ),
        Ok(Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into()))
    );
    // Empty variables count as unset.
    assert_eq!(auth(&v1, &[(TOKEN_ENV, "")]), Ok(None));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").expect("write");
    let path = file.to_string_lossy().into_owned();
    let with_file: Vec<&str> = v2
        .iter()
        .copied()
        .chain(["--influx-token-file", &path])
        .collect();
    assert_eq!(auth(&with_file, &[]), Ok(Some("Token from-file".into())));

    for (args, env, want) in [
        (
            &with_file[..],
            &[(TOKEN_ENV, "t")][..],
            "--influx-token-file",
        ),
        (
            &v1[..],
            &[(TOKEN_ENV, "t"), (USERNAME_ENV, "u")][..],
            USERNAME_ENV,
        ),
        (
            &v1[..],
            &[(USERNAME_ENV, "u")][..],
            "INFLUX_USERNAME is set without INFLUX_PASSWORD",
        ),
        (
            &v1[..],
            &[(PASSWORD_ENV, "p")][..],
            "INFLUX_PASSWORD is set without INFLUX_USERNAME",
        ),
        (
            &v2[..],
            &[(USERNAME_ENV, "u"), (PASSWORD_ENV, "p")][..],
            "INFLUX_USERNAME: username and password are for the 1.x API",
        ),
        (
            &v1[..],
            &[(TOKEN_ENV, "a\nb")][..],
            "INFLUX_TOKEN or --influx-token-file: not usable",
        ),
    ] {
        let err = auth(args, env).expect_err(want);
        assert!(err.starts_with(want), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    let missing = dir.path().join("missing");
    let missing = missing.to_string_lossy().into_owned();
    let args: Vec<&str> = v2
        .iter()
        .copied()
        .chain(["--influx-token-file", &missing])
        .collect();
    let err = auth(&args, &[]).expect_err("missing file");
    assert_eq!(err, format!("--influx-token-file {missing}: no such file"));
    std::fs::write(&file, " \n").expect("write");
    let err = auth(&with_file, &[]).expect_err("empty file");
    assert!(err.ends_with("the file is empty"), "{err}");
}

#[test]
fn base64_matches_rfc4648() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

#[test]
fn debug_output_has_no_credentials() {
    let args = ["--influx-url", "http://h:8086", "--influx-db", "d"];
    let config = config(&args, &[(TOKEN_ENV, "s3cr3t")])
        .expect("valid")
        .expect("configured");
    assert!(!format!("{config:?}").contains("s3cr3t"));
}

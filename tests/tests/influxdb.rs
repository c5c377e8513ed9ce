//! The InfluxDB output against servers the tests start themselves: Debian's
//! `influxd` (1.x) on a loopback port for an outage and a wrong database, and
//! a scripted endpoint standing in for the 2.x API (no 2.x server is packaged
//! in Debian) that checks the request and answers 429, 500 and 400 on cue.
//! With CI=true a missing `influxd` (or root, for the outage test, which reads
//! every network namespace) is a failure, not a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use synproxy_tests::harness::{agent_binary, wait_until, Needs};
use synproxy_tests::influxdb::{self, gunzip, InfluxServer, Reply, ScriptedEndpoint};
use synproxy_tests::line_protocol::{parse_line, Line};
use synproxy_tests::require;

/// Root and the kernel's SYNPROXY counters, for `--netns all`.
const ROOT_NEEDS: Needs = Needs {
    what: "this InfluxDB test (--netns all)",
    root: true,
    programs: &[],
    synproxy: true,
};

/// A proc root whose net/stat/synproxy the test writes (two CPUs).
struct ProcFixture(PathBuf);

impl ProcFixture {
    fn new(syn_received: [u32; 2]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "spx-influx-proc-{}-{}",
            std::process::id(),
            synproxy_tests::netns::next_seq()
        ));
        std::fs::create_dir_all(dir.join("net/stat"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut text = String::from(
            "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n",
        );
        for syn in syn_received {
            text.push_str(&format!(
                "00000000\t{syn:08x}\t00000000\t00000001\t00000000\t00000000\n"
            ));
        }
        std::fs::write(dir.join("net/stat/synproxy"), text)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    fn root(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for ProcFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent, with its stdout and stderr lines collected as they come.
struct RunningAgent {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(agent_binary());
        command
            // The fake proc trees hold the SYNPROXY file only, and the
            // tests count the lines written.
            .args(["--no-ebpf", "--no-nstat", "--no-conntrack", "--no-verdict"])
            .args(["--log-level", "debug"])
            .args(args)
            .env_remove("INFLUX_TOKEN")
            .env_remove("INFLUX_USERNAME")
            .env_remove("INFLUX_PASSWORD")
            .env_remove("HOST_PROC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let sink = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(line);
                    }
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("agent: {line}");
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(line);
                    }
                }
            }));
        }
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGTERM; waits for the exit and for every line of output: (exit
    /// code, stdout lines, stderr lines).
    fn stop(mut self) -> (Option<i32>, Vec<String>, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the agent: {e}"));
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        (status.code(), self.stdout(), self.stderr())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(text: &str) -> Line {
    parse_line(text).unwrap_or_else(|e| panic!("{e:#}: {text}"))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// (netns tag or "", timestamp) of every `synproxy` line printed.
fn printed_points(lines: &[String]) -> Vec<(String, i64)> {
    lines
        .iter()
        .filter(|l| l.starts_with("synproxy,") || l.starts_with("synproxy "))
        .map(|l| {
            let line = parse(l);
            (
                line.tags.get("netns").cloned().unwrap_or_default(),
                line.timestamp.unwrap_or_default(),
            )
        })
        .collect()
}

/// (netns tag or "", timestamp) -> how many points the database holds.
fn stored_points(server: &InfluxServer, db: &str) -> Result<BTreeMap<(String, i64), u32>, String> {
    let series = server
        .query(db, "SELECT syn_received FROM synproxy GROUP BY netns")
        .map_err(|e| format!("{e:#}"))?;
    let mut points = BTreeMap::new();
    for s in series {
        let netns = s.tags.get("netns").cloned().unwrap_or_default();
        for row in s.rows {
            let ts = row
                .get("time")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or_default();
            *points.entry((netns.clone(), ts)).or_insert(0) += 1;
        }
    }
    Ok(points)
}

/// InfluxDB is killed (SIGKILL) for over 20 s while the agent samples every
/// 500 ms, then started again on the same port and data: afterwards every
/// round the agent printed (--stdout) is in the database, once, including
/// every round of the outage.
#[test]
fn influxdb_outage_loses_no_round_and_writes_none_twice() {
    require!(influxdb::NEEDS.check());
    require!(ROOT_NEEDS.check());
    let mut server = InfluxServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    server
        .execute("CREATE DATABASE outage")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = server.url();
    let agent = RunningAgent::start(
        &[
            "--netns",
            "all",
            "--interval",
            "500ms",
            "--influx-url",
            &url,
            "--influx-db",
            "outage",
            "--stdout",
        ],
        &[],
    );
    let long = Duration::from_secs(120);
    wait_until("3 rounds in the database before the outage", long, || {
        let points = stored_points(&server, "outage")?;
        let rounds: BTreeSet<i64> = points.keys().map(|(_, ts)| *ts).collect();
        if rounds.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} rounds so far", rounds.len()))
        }
    });

    let outage_start = now_ns();
    let killed_at = Instant::now();
    server
        .stop(libc::SIGKILL)
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_until(
        "the agent to log a failed write and retry",
        long,
        || match agent.stderr().iter().any(|l| l.contains("retrying")) {
            true => Ok(()),
            false => Err("no retry logged yet".to_string()),
        },
    );
    // The outage itself: the one fixed wait.
    let outage = Duration::from_secs(21);
    std::thread::sleep(outage.saturating_sub(killed_at.elapsed()));
    let outage_end = now_ns();
    server.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let outage_secs = killed_at.elapsed().as_secs_f64();

    wait_until(
        "the agent to log that writes succeed again",
        long,
        || match agent
            .stderr()
            .iter()
            .any(|l| l.contains("writing again after"))
        {
            true => Ok(()),
            false => Err("no recovery logged yet".to_string()),
        },
    );
    wait_until("every printed round in the database", long, || {
        let printed = printed_points(&agent.stdout());
        let stored = stored_points(&server, "outage")?;
        let missing = printed.iter().filter(|p| !stored.contains_key(p)).count();
        match missing {
            0 => Ok(()),
            n => Err(format!("{n} of {} printed points missing", printed.len())),
        }
    });
    let (code, stdout, _) = agent.stop();
    assert_eq!(code, Some(0), "SIGTERM must exit 0");

    // After the last flush: the database holds exactly what was printed.
    let printed = printed_points(&stdout);
    let stored = stored_points(&server, "outage").unwrap_or_else(|e| panic!("{e}"));
    let printed_set: BTreeSet<(String, i64)> = printed.iter().cloned().collect();
    assert_eq!(printed_set.len(), printed.len(), "a point printed twice");
    let missing: Vec<_> = printed_set
        .iter()
        .filter(|p| !stored.contains_key(p))
        .collect();
    let unknown: Vec<_> = stored.keys().filter(|p| !printed_set.contains(p)).collect();
    let duplicates: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let in_outage: Vec<_> = printed_set
        .iter()
        .filter(|(_, ts)| (outage_start..=outage_end).contains(ts))
        .collect();
    let outage_rounds: BTreeSet<i64> = in_outage.iter().map(|(_, ts)| *ts).collect();
    let outage_found = in_outage
        .iter()
        .filter(|p| stored.contains_key(**p))
        .count();
    eprintln!(
        "outage: server down {outage_secs:.1} s; {} rounds ({} points) produced during it, {outage_found} found; {} points printed in all, {} stored, {} missing, {} duplicates, {} unknown",
        outage_rounds.len(),
        in_outage.len(),
        printed_set.len(),
        stored.len(),
        missing.len(),
        duplicates.len(),
        unknown.len()
    );
    // 20 s at 500 ms is 40 rounds; a slow machine still makes 20.
    assert!(
        outage_rounds.len() >= 20,
        "only {} rounds during the outage",
        outage_rounds.len()
    );
    assert_eq!(outage_found, in_outage.len(), "outage points missing");
    assert!(missing.is_empty(), "printed but not stored: {missing:?}");
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
    assert!(unknown.is_empty(), "stored but never printed: {unknown:?}");
}

/// A database that does not exist: InfluxDB 1.6 answers 404 "database not
/// found"; the agent logs that once with the server's message, does not
/// retry, keeps sampling, and writes again once the database exists.
#[test]
fn influxdb_wrong_database_is_logged_once_and_not_retried() {
    require!(influxdb::NEEDS.check());
    let server = InfluxServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    let proc = ProcFixture::new([3, 4]);
    let url = server.url();
    let agent = RunningAgent::start(
        &[
            "--proc-root",
            proc.root(),
            "--interval",
            "200ms",
            "--influx-url",
            &url,
            "--influx-db",
            "nosuchdb",
            "--stdout",
        ],
        &[],
    );
    let long = Duration::from_secs(120);
    let refused = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("404 Not Found"))
            .cloned()
            .collect()
    };
    wait_until("the agent to log the 404", long, || {
        match refused(&agent.stderr()).is_empty() {
            false => Ok(()),
            true => Err("not logged yet".to_string()),
        }
    });
    // Ten more rounds, each refused the same way.
    let printed_then = agent.stdout().len();
    wait_until("ten more rounds after the 404", long, || {
        match agent.stdout().len() >= printed_then + 10 {
            true => Ok(()),
            false => Err(format!("{} rounds", agent.stdout().len() - printed_then)),
        }
    });
    server
        .execute("CREATE DATABASE nosuchdb")
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_until("points in the new database", long, || {
        let stored = stored_points(&server, "nosuchdb")?;
        match stored.len() >= 2 {
            true => Ok(()),
            false => Err(format!("{} points", stored.len())),
        }
    });
    let (code, stdout, stderr) = agent.stop();
    assert_eq!(code, Some(0));
    let refusals = refused(&stderr);
    assert_eq!(refusals.len(), 1, "logged once: {stderr:#?}");
    assert!(
        refusals[0].contains("database not found") && refusals[0].contains("nosuchdb"),
        "the server's message: {}",
        refusals[0]
    );
    assert!(refusals[0].contains("not retried"), "{}", refusals[0]);
    assert!(
        !stderr.iter().any(|l| l.contains("retrying")),
        "a 404 is not retried: {stderr:#?}"
    );
    // Rounds refused are not written later: fewer points than rounds.
    let stored = stored_points(&server, "nosuchdb").unwrap_or_else(|e| panic!("{e}"));
    let printed = printed_points(&stdout);
    assert!(
        stored.len() + 10 <= printed.len(),
        "{} stored, {} printed",
        stored.len(),
        printed.len()
    );
    for point in stored.keys() {
        assert!(
            printed.contains(point),
            "stored but never printed: {point:?}"
        );
    }
}

/// The 2.x API against a scripted endpoint: path, query, token, gzip,
/// content type, a body that parses as line protocol; a 429 with Retry-After
/// and a 500 are retried (the Retry-After honoured), a 400 is not (and is
/// logged once for two such answers); every round printed reaches exactly
/// one answered request.
#[test]
fn influx_v2_api_headers_gzip_retries_and_refusals() {
    const TOKEN: &str = "test-token-Zm9v";
    let refusal = r#"{"code":"invalid","message":"unable to parse points: bad timestamp"}"#;
    let endpoint = ScriptedEndpoint::start(vec![
        Reply::new(429).header("Retry-After", "1"),
        Reply::new(500).body("{\"code\":\"internal error\",\"message\":\"storage is busy\"}"),
        Reply::new(204),
        Reply::new(400).body(refusal),
        Reply::new(400).body(refusal),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let proc = ProcFixture::new([7, 9]);
    let url = endpoint.url();
    let agent = RunningAgent::start(
        &[
            "--proc-root",
            proc.root(),
            "--interval",
            "300ms",
            "--hostname",
            "gw01",
            "--influx-url",
            &url,
            "--influx-org",
            "my org",
            "--influx-bucket",
            "net/1h",
            "--stdout",
        ],
        &[("INFLUX_TOKEN", TOKEN)],
    );
    endpoint.wait_for_requests(8);
    let (code, stdout, stderr) = agent.stop();
    assert_eq!(code, Some(0));
    let received = endpoint.received();

    // Every request: the 2.x write API, the token, gzip line protocol.
    let mut bodies = Vec::new();
    for r in &received {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.target,
            "/api/v2/write?org=my%20org&bucket=net%2F1h&precision=ns"
        );
        let header = |name: &str| r.headers.get(name).cloned().unwrap_or_default();
        assert_eq!(header("authorization"), format!("Token {TOKEN}"));
        assert_eq!(header("content-encoding"), "gzip");
        assert!(
            header("content-type").starts_with("text/plain"),
            "{:?}",
            r.headers
        );
        let body = gunzip(&r.body).unwrap_or_else(|e| panic!("{e:#}"));
        let lines: Vec<Line> = body.lines().map(parse).collect();
        assert!(!lines.is_empty());
        for line in &lines {
            assert_eq!(line.measurement, "synproxy");
            assert_eq!(line.tags.get("host").map(String::as_str), Some("gw01"));
            assert_eq!(line.counter("syn_received").ok(), Some(16));
        }
        bodies.push(body);
    }
    let stamps =
        |body: &str| -> BTreeSet<i64> { body.lines().filter_map(|l| parse(l).timestamp).collect() };

    // 429, then 500: the same oldest round is sent again, after at least the
    // second Retry-After asked for; then it is written.
    assert_eq!(received[0].status, 429);
    assert_eq!(received[1].status, 500);
    assert_eq!(received[2].status, 204);
    assert!(
        received[1].at - received[0].at >= Duration::from_millis(950),
        "retried after {:?} despite Retry-After: 1",
        received[1].at - received[0].at
    );
    assert!(
        bodies[1].starts_with(&bodies[0]),
        "the 429'd batch is retried"
    );
    assert!(
        bodies[2].starts_with(&bodies[0]),
        "the 500'd batch is retried"
    );

    // 400 twice: neither batch is sent again.
    assert_eq!((received[3].status, received[4].status), (400, 400));
    let refused: BTreeSet<i64> = stamps(&bodies[3])
        .union(&stamps(&bodies[4]))
        .copied()
        .collect();
    for (r, body) in received.iter().zip(&bodies).skip(4) {
        if r.status == 204 {
            assert!(
                stamps(body).is_disjoint(&refused),
                "a refused round was sent again"
            );
        }
    }

    // Each round printed is in exactly one request that was answered for
    // good (204 or 400), and in no two written ones.
    let mut written: BTreeMap<i64, u32> = BTreeMap::new();
    for (r, body) in received.iter().zip(&bodies) {
        if r.status == 204 {
            for ts in stamps(body) {
                *written.entry(ts).or_default() += 1;
            }
        }
    }
    assert!(
        written.values().all(|n| *n == 1),
        "written twice: {written:?}"
    );
    let printed: BTreeSet<i64> = printed_points(&stdout)
        .into_iter()
        .map(|(_, ts)| ts)
        .collect();
    for ts in &printed {
        assert!(
            written.contains_key(ts) || refused.contains(ts),
            "round {ts} printed but never written"
        );
    }
    let coalesced = received
        .iter()
        .zip(&bodies)
        .any(|(_, b)| stamps(b).len() > 1);
    assert!(coalesced, "rounds held back by the retries go together");

    // The log: each failure once, the refusal once with the server's message.
    let count = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("429 Too Many Requests"), 1, "{stderr:#?}");
    assert_eq!(count("500 Internal Server Error"), 1, "{stderr:#?}");
    assert_eq!(count("400 Bad Request"), 1, "{stderr:#?}");
    assert_eq!(
        count("unable to parse points: bad timestamp"),
        1,
        "{stderr:#?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("writing again after 2 failed attempts")),
        "{stderr:#?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains(TOKEN)),
        "the token is never logged"
    );
}

/// The 1.x API with a username and password: basic authentication, and the
/// `/write` path with the database and nanosecond precision.
#[test]
fn influx_v1_api_basic_auth() {
    let endpoint = ScriptedEndpoint::start(Vec::new()).unwrap_or_else(|e| panic!("{e:#}"));
    let proc = ProcFixture::new([1, 1]);
    let url = format!("{}/prefix/", endpoint.url());
    let agent = RunningAgent::start(
        &[
            "--proc-root",
            proc.root(),
            "--interval",
            "200ms",
            "--influx-url",
            &url,
            "--influx-db",
            "net",
        ],
        &[("INFLUX_USERNAME", "agent"), ("INFLUX_PASSWORD", "pa:ss")],
    );
    endpoint.wait_for_requests(2);
    let (code, stdout, _) = agent.stop();
    assert_eq!(code, Some(0));
    assert!(
        stdout.is_empty(),
        "stdout is quiet without --stdout: {stdout:?}"
    );
    for r in endpoint.received() {
        assert_eq!(r.target, "/prefix/write?db=net&precision=ns");
        // base64("agent:pa:ss")
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some("Basic YWdlbnQ6cGE6c3M=")
        );
        let body = gunzip(&r.body).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(body.starts_with("synproxy,host="), "{body}");
    }
}

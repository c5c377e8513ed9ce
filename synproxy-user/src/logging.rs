//! stderr logging in four shapes: plain text for people, Telegraf execd's
//! `E!`/`W!`/`I!`/`D!` prefixes, JSON lines for log pipelines, and syslog
//! priority prefixes (`<3>`...`<7>`) for the systemd journal.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Telegraf,
    Json,
    /// `<N>message`: the journal reads the priority from the prefix and
    /// stamps the time itself.
    Journald,
}

/// The format for `--log-format` (or its variable) when given, else
/// `journald` when stderr is the journal, else `text`.
pub fn resolve(explicit: Option<LogFormat>) -> LogFormat {
    explicit.unwrap_or_else(|| {
        if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
            LogFormat::Journald
        } else {
            LogFormat::Text
        }
    })
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for the stream it connects to
/// stdout/stderr; the variable is inherited, so stderr is the journal only
/// while its own device and inode still match (sd_journal_stream_fd(3)).
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

struct StderrLogger {
    format: LogFormat,
    level: LevelFilter,
}

pub fn init(format: LogFormat, level: LevelFilter) {
    let logger = Box::new(StderrLogger { format, level });
    // Only fails when a logger is already set (tests): keep the first one.
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(
            self.format,
            record.level(),
            &record.args().to_string(),
            std::time::SystemTime::now(),
        );
        // A closed stderr must not take the agent down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Records kept in memory instead of written to stderr: `top` owns the
/// terminal, so it shows the latest record itself and prints the warnings
/// and errors after it has restored the terminal.
#[derive(Debug, Default)]
pub struct LogRing {
    records: Mutex<VecDeque<(Level, String, std::time::SystemTime)>>,
}

/// Records a [`LogRing`] keeps (the oldest go first).
const RING_RECORDS: usize = 64;

impl LogRing {
    fn push(&self, level: Level, message: String) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == RING_RECORDS {
            records.pop_front();
        }
        records.push_back((level, message, std::time::SystemTime::now()));
    }

    /// The newest record as `LEVEL message`.
    pub fn last(&self) -> Option<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .back()
            .map(|(level, message, _)| format!("{level:<5} {message}"))
    }

    /// Warnings and errors kept, oldest first, as stderr would have had them.
    pub fn problems(&self, format: LogFormat) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .iter()
            .filter(|(level, _, _)| *level <= Level::Warn)
            .map(|(level, message, at)| format_record(format, *level, message, *at))
            .collect()
    }
}

struct RingLogger {
    ring: Arc<LogRing>,
    level: LevelFilter,
}

impl Log for RingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let message = escape_controls(&record.args().to_string());
            self.ring.push(record.level(), message);
        }
    }

    fn flush(&self) {}
}

/// Logs into the returned ring instead of stderr.
pub fn init_ring(level: LevelFilter) -> Arc<LogRing> {
    let ring = Arc::new(LogRing::default());
    let logger = Box::new(RingLogger {
        ring: Arc::clone(&ring),
        level,
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    ring
}

/// One log line, newline included. Messages are kept to one line and carry
/// no control character (a namespace name or a path may hold an escape
/// sequence meant for the terminal): text and telegraf write each as `\xHH`
/// per byte, JSON as `\uXXXX`.
pub fn format_record(
    format: LogFormat,
    level: Level,
    message: &str,
    at: std::time::SystemTime,
) -> String {
    let message = match format {
        LogFormat::Json => message.to_string(),
        LogFormat::Text | LogFormat::Telegraf | LogFormat::Journald => escape_controls(message),
    };
    match format {
        LogFormat::Text => format!("{} {:<5} {message}\n", rfc3339(at), level),
        LogFormat::Telegraf => {
            let prefix = match level {
                Level::Error => "E!",
                Level::Warn => "W!",
                Level::Info => "I!",
                Level::Debug => "D!",
                Level::Trace => "T!",
            };
            format!("{prefix} [synproxy-agent] {message}\n")
        }
        // syslog(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
        LogFormat::Journald => {
            let priority = match level {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{priority}>{message}\n")
        }
        LogFormat::Json => format!(
            "{{\"ts\":\"{}\",\"level\":\"{}\",\"msg\":\"{}\"}}\n",
            rfc3339(at),
            level.as_str().to_ascii_lowercase(),
            json_escape(&message)
        ),
    }
}

/// Control characters (C0, DEL, C1) as `\xHH` per UTF-8 byte; the rest as is.
pub fn escape_controls(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // DEL and the C1 controls too: JSON allows them raw, terminals do not.
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` without a date crate.
fn rfc3339(at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const AT: u64 = 1_795_873_493; // 2026-11-28T13:44:53Z

    fn at() -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(AT * 1000 + 7)
    }

    #[test]
    fn text() {
        assert_eq!(
            format_record(LogFormat::Text, Level::Warn, "file gone", at()),
            "2026-11-28T13:44:53.007Z WARN  file gone\n"
        );
    }

    #[test]
    fn telegraf_prefixes() {
        for (level, prefix) in [
            (Level::Error, "E! "),
            (Level::Warn, "W! "),
            (Level::Info, "I! "),
            (Level::Debug, "D! "),
        ] {
            let line = format_record(LogFormat::Telegraf, level, "x", at());
            assert!(line.starts_with(prefix), "{line}");
        }
    }

    #[test]
    fn journald_priorities_and_no_timestamp() {
        for (level, line) in [
            (Level::Error, "<3>x\n"),
            (Level::Warn, "<4>x\n"),
            (Level::Info, "<6>x\n"),
            (Level::Debug, "<7>x\n"),
            (Level::Trace, "<7>x\n"),
        ] {
            assert_eq!(format_record(LogFormat::Journald, level, "x", at()), line);
        }
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        for value in [None, Some(""), Some("1"), Some("a:b"), Some("0:0")] {
            assert!(!stderr_is_journal(value), "{value:?}");
        }
        assert_eq!(resolve(Some(LogFormat::Json)), LogFormat::Json);
    }

    #[test]
    fn json_is_escaped_and_single_line() {
        let line = format_record(LogFormat::Json, Level::Error, "a \"b\"\\\nc\u{1}", at());
        assert_eq!(
            line,
            "{\"ts\":\"2026-11-28T13:44:53.007Z\",\"level\":\"error\",\"msg\":\"a \\\"b\\\"\\\\\\u000ac\\u0001\"}\n"
        );
        let line = format_record(LogFormat::Json, Level::Warn, "x\u{1b}[2J\u{7f}\u{9b}", at());
        assert!(
            line.ends_with("\"msg\":\"x\\u001b[2J\\u007f\\u009b\"}\n"),
            "{line}"
        );
    }

    /// No format lets a control character through: a message with an
    /// escape sequence (a namespace name, a path) cannot reach the terminal.
    #[test]
    fn no_control_character_in_any_format() {
        let message = "netns a\u{1b}]0;owned\u{7}b\r\nc\td\u{7f}\u{9b}31m\u{0}";
        for format in [
            LogFormat::Text,
            LogFormat::Telegraf,
            LogFormat::Json,
            LogFormat::Journald,
        ] {
            let line = format_record(format, Level::Warn, message, at());
            let body = line.strip_suffix('\n').unwrap_or(&line);
            assert!(!body.chars().any(char::is_control), "{format:?}: {line:?}");
        }
        assert_eq!(
            format_record(
                LogFormat::Telegraf,
                Level::Info,
                "a\u{1b}[31m\nb\u{9b}",
                at()
            ),
            "I! [synproxy-agent] a\\x1b[31m\\x0ab\\xc2\\x9b\n"
        );
        let logger = RingLogger {
            ring: Arc::new(LogRing::default()),
            level: LevelFilter::Info,
        };
        logger.log(
            &Record::builder()
                .level(Level::Warn)
                .args(format_args!("x\u{1b}[2Jy"))
                .build(),
        );
        assert_eq!(logger.ring.last().as_deref(), Some("WARN  x\\x1b[2Jy"));
    }

    #[test]
    fn ring_keeps_the_newest_and_reports_problems() {
        let ring = LogRing::default();
        assert_eq!(ring.last(), None);
        for i in 0..100 {
            ring.push(Level::Info, format!("info {i}"));
        }
        ring.push(Level::Warn, "eBPF disabled: x".into());
        assert_eq!(ring.last().as_deref(), Some("WARN  eBPF disabled: x"));
        let problems = ring.problems(LogFormat::Telegraf);
        assert_eq!(problems, ["W! [synproxy-agent] eBPF disabled: x\n"]);
        assert_eq!(ring.records.lock().unwrap().len(), RING_RECORDS);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }
}

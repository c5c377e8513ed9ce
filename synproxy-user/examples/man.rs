//! Writes the synproxy-agent(1) man page, generated from the CLI definition
//! with clap_mangen, to the file given as the only argument (stdout without one).
//! `cargo xtask man` and `cargo xtask package` run it.

use clap::CommandFactory;
use std::io::Write;
use synproxy_user::cli::Cli;

/// Sections clap_mangen cannot derive from the CLI.
const EXTRA: &str = r#".SH FILES
.TP
\fI/proc/net/stat/synproxy\fR
the kernel's SYNPROXY counters (per network namespace; \fB\-\-proc\-root\fR or \fBHOST_PROC\fR moves it)
.TP
\fI/etc/default/synproxy\-agent\fR
the unit's settings (\fBEnvironmentFile=\fR): every variable of ENVIRONMENT, commented, with its default; \fBARGS\fR for flags without one (\fB\-\-tag\fR); kept on upgrade, removed on purge
.TP
\fI/usr/lib/systemd/system/synproxy\-agent.service\fR
the hardened systemd unit (not enabled on install): \fBsystemctl enable \-\-now synproxy\-agent\fR; Prometheus on 127.0.0.1:10816, logs with syslog priorities (\fB\-\-log\-format journald\fR)
.TP
\fI/usr/share/doc/synproxy\-agent/examples/netns\-all.conf\fR
drop\-in for \fB\-\-netns all\fR; install it as \fI/etc/systemd/system/synproxy\-agent.service.d/netns\-all.conf\fR
.TP
\fI/usr/share/doc/synproxy\-agent/examples/remote\-scrape.conf\fR
drop\-in for a scrape from another host: listen address and \fBIPAddressAllow=\fR together
.TP
\fI/usr/share/synproxy\-agent/prometheus/synproxy\-alerts.yml\fR
Prometheus alerting rules for the agent's metrics
.SH EXIT STATUS
0 on success and on SIGTERM/SIGINT; 1 when \fB\-\-once\fR could not read a namespace; 2 for a bad flag or an unusable \fB\-\-proc\-root\fR or \fB\-\-prometheus\-listen\fR.
.SH SEE ALSO
\fBsystemd.exec\fR(5), \fBtelegraf\fR(1), \fBprometheus\fR(1)
"#;

/// Variables the agent reads that belong to no flag.
const OTHER_ENV: &str = r#".TP
.B INFLUX_TOKEN
the InfluxDB token (or \fBINFLUX_USERNAME\fR and \fBINFLUX_PASSWORD\fR, 1.x)
.TP
.B JOURNAL_STREAM
set by systemd: when it names stderr, the default \fB\-\-log\-format\fR is journald
"#;

/// Escapes text for roff: backslashes, and hyphens as `\-` (real minus signs,
/// so options copy and search as typed); a leading `.` or `'` is protected.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// EXAMPLES (the `--help` epilogue, unwrapped) and ENVIRONMENT (every flag's
/// variable), both from the CLI definition.
fn generated_sections(cmd: &clap::Command) -> String {
    let mut out = String::new();
    // One page: each command's long help, its options left to `--help`
    // (clap_mangen would point at a page per command).
    let commands: Vec<&clap::Command> = cmd.get_subcommands().collect();
    if !commands.is_empty() {
        out.push_str(".SH COMMANDS\n");
        for sub in commands {
            let about = sub
                .get_long_about()
                .or(sub.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default();
            out.push_str(&format!(
                ".TP\n.B synproxy\\-agent {}\n{}\nOptions: \\fBsynproxy\\-agent {} \\-\\-help\\fR.\n",
                roff(sub.get_name()),
                roff(&about.replace('\n', " ")),
                roff(sub.get_name())
            ));
        }
    }
    if let Some(after) = cmd.get_after_help() {
        let text = after.to_string();
        let examples: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.ends_with(':'))
            .collect();
        if !examples.is_empty() {
            out.push_str(".SH EXAMPLES\n");
            for example in examples {
                let (command, comment) = example.split_once('#').unwrap_or((example, ""));
                out.push_str(".TP\n.B ");
                out.push_str(&roff(command.trim()));
                out.push('\n');
                out.push_str(&roff(comment.trim()));
                out.push('\n');
            }
        }
    }
    let env: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_string_lossy().into_owned();
            Some((var, format!("--{}", arg.get_long()?)))
        })
        .collect();
    if !env.is_empty() {
        out.push_str(".SH ENVIRONMENT\n");
        for (var, flag) in env {
            out.push_str(&format!(
                ".TP\n.B {}\nas \\fB{}\\fR\n",
                roff(&var),
                roff(&flag)
            ));
        }
        out.push_str(OTHER_ENV);
    }
    out
}

fn main() -> std::process::ExitCode {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    let rendered = man
        .render_title(&mut page)
        .and_then(|()| man.render_name_section(&mut page))
        .and_then(|()| man.render_synopsis_section(&mut page))
        .and_then(|()| man.render_description_section(&mut page))
        .and_then(|()| man.render_options_section(&mut page));
    if let Err(e) = rendered {
        eprintln!("rendering the man page: {e}");
        return std::process::ExitCode::FAILURE;
    }
    page.extend_from_slice(generated_sections(&cmd).as_bytes());
    page.extend_from_slice(EXTRA.as_bytes());
    if let Err(e) = man.render_version_section(&mut page) {
        eprintln!("rendering the man page: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let written = match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(&path, &page)
            .map_err(|e| format!("{}: {e}", std::path::Path::new(&path).display())),
        None => std::io::stdout()
            .write_all(&page)
            .map_err(|e| format!("stdout: {e}")),
    };
    match written {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

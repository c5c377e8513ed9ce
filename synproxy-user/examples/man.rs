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
\fI/usr/lib/systemd/system/synproxy\-agent.service\fR
the hardened systemd unit (not enabled on install): \fBsystemctl enable \-\-now synproxy\-agent\fR
.TP
\fI/usr/share/doc/synproxy\-agent/examples/netns\-all.conf\fR
drop\-in for \fB\-\-netns all\fR; install it as \fI/etc/systemd/system/synproxy\-agent.service.d/netns\-all.conf\fR
.TP
\fI/usr/share/synproxy\-agent/prometheus/synproxy\-alerts.yml\fR
Prometheus alerting rules for the agent's metrics
.SH EXIT STATUS
0 on success and on SIGTERM/SIGINT; 1 when \fB\-\-once\fR could not read a namespace; 2 for a bad flag or an unusable \fB\-\-proc\-root\fR or \fB\-\-prometheus\-listen\fR.
.SH SEE ALSO
\fBsystemd.exec\fR(5), \fBtelegraf\fR(1), \fBprometheus\fR(1)
"#;

fn main() -> std::process::ExitCode {
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    if let Err(e) = man.render(&mut page) {
        eprintln!("rendering the man page: {e}");
        return std::process::ExitCode::FAILURE;
    }
    page.extend_from_slice(EXTRA.as_bytes());
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

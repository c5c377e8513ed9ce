//! A terminal a test can type into and read, as a person would: a tmux
//! server of its own (own socket, no user config), one pane of a fixed size
//! running `sh`, `send-keys` to type and `capture-pane` to read the screen.

use crate::tools::check_status;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How often the screen is read while waiting for something on it.
const POLL: Duration = Duration::from_millis(100);

pub struct Tmux {
    /// `dir/socket`: an absolute path, so the socket never lands in the
    /// current directory, and removing `dir` leaves nothing behind (tmux
    /// keeps a dead server's socket file).
    socket: String,
    /// A fresh directory under the temporary directory (`TMPDIR`, else
    /// `/tmp`): holds the socket and the server's config (status line off:
    /// the pane is the window).
    dir: PathBuf,
}

impl Tmux {
    /// A server with one `width` x `height` pane running `sh` with prompt `$ `.
    pub fn start(width: u16, height: u16) -> Result<Self> {
        let name = format!(
            "spx-top-{}-{}",
            std::process::id(),
            crate::netns::next_seq()
        );
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("socket").display().to_string();
        let conf = dir.join("tmux.conf");
        std::fs::write(&conf, "set -g status off\nset -g history-limit 0\n")
            .with_context(|| format!("writing {}", conf.display()))?;
        let tmux = Tmux { socket, dir };
        let (w, h) = (width.to_string(), height.to_string());
        let conf = conf.display().to_string();
        // -u: UTF-8 whatever the locale, so box drawing and bars read back as written.
        let out = Command::new("tmux")
            .args(["-u", "-S", &tmux.socket, "-f", &conf])
            .args(["new-session", "-d", "-x", &w, "-y", &h, "-s", "top"])
            .args(["env", "PS1=$ ", "sh"])
            .env("LANG", "C.UTF-8")
            .output()
            .context("cannot run tmux")?;
        check_status(&out, "tmux new-session")?;
        let size = tmux.display("#{pane_width}x#{pane_height}")?;
        if size != format!("{width}x{height}") {
            bail!("tmux pane is {size}, wanted {width}x{height}");
        }
        Ok(tmux)
    }

    fn cmd(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("tmux")
            .args(["-S", &self.socket])
            .args(args)
            .output()
            .with_context(|| format!("cannot run tmux {}", args.join(" ")))?;
        check_status(&out, &format!("tmux {}", args.join(" ")))?;
        Ok(out)
    }

    /// A tmux format of the pane, e.g. `#{alternate_on}`.
    pub fn display(&self, format: &str) -> Result<String> {
        let out = self.cmd(&["display-message", "-p", "-t", "top", format])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) -> Result<()> {
        self.cmd(&["send-keys", "-t", "top", "-l", text])?;
        self.keys("Enter")
    }

    /// tmux key names: `q`, `C-c`, `Tab`, `Enter`.
    pub fn keys(&self, keys: &str) -> Result<()> {
        self.cmd(&["send-keys", "-t", "top", keys]).map(drop)
    }

    /// The visible screen, one line per row.
    pub fn screen(&self) -> Result<String> {
        let out = self.cmd(&["capture-pane", "-p", "-t", "top"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Reads the screen until `check` returns `Some`, or fails after
    /// `timeout` naming `what` and showing the last screen.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if let Some(found) = check(&screen) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; the screen was:\n{screen}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The process id of the pane's shell.
    pub fn shell_pid(&self) -> Result<u32> {
        let pid = self.display("#{pane_pid}")?;
        pid.parse()
            .with_context(|| format!("tmux pane_pid {pid:?}"))
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends `signal` to the one `synproxy-agent` the pane's shell runs, as
    /// a user or a hung-up terminal would.
    pub fn signal_agent(&self, signal: i32) -> Result<()> {
        let shell = self.shell_pid()?;
        let agents: Vec<u32> = children(shell)
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "synproxy-agent")
            })
            .collect();
        let [pid] = agents[..] else {
            bail!("want one synproxy-agent under the pane's shell {shell}, found {agents:?}");
        };
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-S", &self.socket, "kill-server"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The children of process `pid` (from every process's `stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The name may hold spaces: fields resume after its ')'.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

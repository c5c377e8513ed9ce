//! `--on-attack CMD` and `--on-attack-timeout`: the command, split on
//! whitespace (no shell, no quoting), its program resolved to an absolute
//! path at start-up and checked to be an executable file, so that a typo is
//! a start-up error naming the flag.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `PATH` a bare program name is looked up in, and the hook's `PATH`
/// (the agent's own environment is not passed on).
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The flag, for messages.
pub const FLAG: &str = "--on-attack";

/// What to run and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    /// The program, an absolute path.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// A run past it is killed (its process group).
    pub timeout: Duration,
}

/// Why `--on-attack` was refused at start-up. One line, naming the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{FLAG}: {0}: no such file")]
    Missing(PathBuf),
    #[error("{FLAG}: no program {0:?} in {HOOK_PATH} (the hook's PATH; give an absolute path)")]
    NotInPath(String),
    #[error("{FLAG}: {0}: not a regular file")]
    NotAFile(PathBuf),
    #[error("{FLAG}: {0}: not executable (no x permission bit)")]
    NotExecutable(PathBuf),
    #[error("{FLAG}: {0}: its #! interpreter {1} does not exist")]
    NoInterpreter(PathBuf, String),
    #[error("{FLAG}: {0}: {1}")]
    Unreadable(PathBuf, String),
}

impl HookConfig {
    /// The hook from the flag's text; `None` when it is empty or blank (how
    /// a settings file turns a hook off).
    pub fn parse(command: &str, timeout: Duration) -> Result<Option<HookConfig>, ConfigError> {
        let mut words = command.split_ascii_whitespace();
        let Some(first) = words.next() else {
            return Ok(None);
        };
        let program = resolve(first)?;
        check_executable(&program)?;
        check_interpreter(&program)?;
        Ok(Some(HookConfig {
            program,
            args: words.map(OsString::from).collect(),
            timeout,
        }))
    }

    /// `--on-attack` and `--on-attack-timeout`; the error is one line. A hook
    /// with attack detection off would never run: an error too.
    pub fn from_cli(cli: &crate::cli::Cli) -> Result<Option<HookConfig>, String> {
        let Some(command) = &cli.on_attack else {
            return Ok(None);
        };
        let hook = Self::parse(command, cli.on_attack_timeout).map_err(|e| e.to_string())?;
        if hook.is_some() && cli.attacks.no_attacks {
            return Err(format!(
                "{FLAG}: attack detection is off (--no-attacks), so the hook would never run"
            ));
        }
        Ok(hook)
    }

    /// The program and arguments as the log shows them.
    pub fn display(&self) -> String {
        let mut out = self.program.display().to_string();
        for arg in &self.args {
            out.push(' ');
            out.push_str(&arg.to_string_lossy());
        }
        out
    }
}

/// A path with a `/` is taken as is (relative ones against the agent's
/// working directory, made absolute now); a bare name is looked up in
/// [`HOOK_PATH`].
fn resolve(program: &str) -> Result<PathBuf, ConfigError> {
    if program.as_bytes().contains(&b'/') {
        let path = Path::new(program);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| ConfigError::Unreadable(path.to_path_buf(), e.to_string()))?
                .join(path)
        };
        return Ok(path);
    }
    HOOK_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| check_executable(candidate).is_ok())
        .ok_or_else(|| ConfigError::NotInPath(program.to_string()))
}

/// A regular file with an execute bit. (Whether the agent's user may run it
/// shows at the first run: permission, a bad interpreter line.)
pub fn check_executable(path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConfigError::Missing(path.to_path_buf()),
        _ => ConfigError::Unreadable(path.to_path_buf(), e.to_string()),
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile(path.to_path_buf()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ConfigError::NotExecutable(path.to_path_buf()));
    }
    Ok(())
}

/// A script's `#!` interpreter must exist (exec would fail with "No such
/// file or directory" for the script itself). A file the agent cannot read
/// is left to the first run.
fn check_interpreter(path: &Path) -> Result<(), ConfigError> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return Ok(());
    };
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return Ok(());
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = String::from_utf8_lossy(line);
    match interpreter.split_ascii_whitespace().next() {
        Some(interp) if interp.starts_with('/') && !Path::new(interp).exists() => Err(
            ConfigError::NoInterpreter(path.to_path_buf(), interp.to_string()),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_bare_name_is_found_in_the_hook_path_and_words_are_arguments() {
        let hook = HookConfig::parse("  sh   -c  true ", T).unwrap().unwrap();
        assert!(hook.program.is_absolute(), "{:?}", hook.program);
        assert!(hook.program.ends_with("sh"));
        assert_eq!(
            hook.args,
            vec![OsString::from("-c"), OsString::from("true")]
        );
        assert_eq!(HookConfig::parse("   ", T), Ok(None));
    }

    #[test]
    fn a_missing_or_unusable_program_is_one_line_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = HookConfig::parse(&missing.display().to_string(), T).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("--on-attack: {}: no such file", missing.display())
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let err = HookConfig::parse(&plain.display().to_string(), T).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("not executable (no x permission bit)"));
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/nonexistent/sh -e\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = HookConfig::parse(&script.display().to_string(), T).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--on-attack: {}: its #! interpreter /nonexistent/sh does not exist",
                script.display()
            )
        );
        std::fs::write(&script, "#! /bin/sh\nexit 0\n").unwrap();
        assert!(HookConfig::parse(&script.display().to_string(), T).is_ok());
        let err = HookConfig::parse(&dir.path().display().to_string(), T).unwrap_err();
        assert_eq!(err, ConfigError::NotAFile(dir.path().to_path_buf()));
        let err = HookConfig::parse("synproxy-no-such-hook arg", T).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--on-attack: no program \"synproxy-no-such-hook\" in /usr/local/sbin:"));
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn the_flags_give_the_hook_and_no_attacks_refuses_it() {
        use clap::Parser;
        let cli = |args: &[&str]| crate::cli::Cli::try_parse_from(args).unwrap();
        let hook = HookConfig::from_cli(&cli(&["agent", "--on-attack", "sh -c true"]))
            .unwrap()
            .unwrap();
        assert_eq!(hook.timeout, Duration::from_secs(10));
        assert_eq!(hook.args.len(), 2);
        let none = cli(&["agent", "--on-attack", "", "--on-attack-timeout", "1h"]);
        assert_eq!(HookConfig::from_cli(&none), Ok(None));
        let off = cli(&["agent", "--on-attack", "sh", "--no-attacks"]);
        assert_eq!(
            HookConfig::from_cli(&off),
            Err(
                "--on-attack: attack detection is off (--no-attacks), so the hook would never run"
                    .into()
            )
        );
    }
}

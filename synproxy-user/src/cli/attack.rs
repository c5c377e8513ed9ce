//! The attack detector's flags (docs/attacks.md).

use crate::analysis::attack::subject::Params;
use crate::cli_bounds::DurationRange;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct AttackArgs {
    /// Do not detect attacks (no synproxy_attack lines, no synproxy_attack*
    /// metrics, no --on-attack runs).
    #[arg(long, env = "SYNPROXY_AGENT_NO_ATTACKS")]
    pub no_attacks: bool,

    /// An attack starts when a rate reaches this many events per second at
    /// least (whatever the baseline); 1 to 1e9.
    #[arg(long, value_name = "RATE", default_value_t = 100.0, value_parser = parse_floor, env = "SYNPROXY_AGENT_ATTACK_FLOOR")]
    pub attack_floor: f64,

    /// ...and this many times its learnt baseline; 1.5 to 1000.
    #[arg(long, value_name = "FACTOR", default_value_t = 4.0, value_parser = parse_factor, env = "SYNPROXY_AGENT_ATTACK_FACTOR")]
    pub attack_factor: f64,

    /// Length of one learning bucket: the baseline covers the last 60 of
    /// them (1m: the last hour); 1s to 1h.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_bucket, env = "SYNPROXY_AGENT_ATTACK_BUCKET")]
    pub attack_bucket: Duration,

    /// An attack ends once its rate has stayed under half its threshold this
    /// long; 0s to 1h.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_release, env = "SYNPROXY_AGENT_ATTACK_RELEASE")]
    pub attack_release: Duration,

    /// How long a namespace is learnt before attacks are detected in it;
    /// 0s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_warmup, env = "SYNPROXY_AGENT_ATTACK_WARMUP")]
    pub attack_warmup: Duration,

    /// Keep the detectors' baselines and attacks in progress in this
    /// directory, so a restart neither relearns an attack as normal nor
    /// loses it (default: $STATE_DIRECTORY, set by systemd's StateDirectory=;
    /// without either, nothing is kept).
    #[arg(long, value_name = "DIR", env = "SYNPROXY_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl AttackArgs {
    pub fn params(&self) -> Params {
        Params {
            bucket_secs: self.attack_bucket.as_secs_f64(),
            factor: self.attack_factor,
            floor: self.attack_floor,
            release_secs: self.attack_release.as_secs_f64(),
            warmup_secs: self.attack_warmup.as_secs_f64(),
            ..Params::default()
        }
    }

    /// The state directory: the flag, else systemd's `$STATE_DIRECTORY`
    /// (its first entry).
    pub fn state_dir(&self, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
        self.state_dir.clone().or_else(|| {
            env("STATE_DIRECTORY")
                .and_then(|v| v.split(':').next().map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty())
        })
    }
}

fn parse_bounded(text: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: not a number"))?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{text:?}: must be between {min} and {max}"))
    }
}

fn parse_floor(text: &str) -> Result<f64, String> {
    parse_bounded(text, 1.0, 1e9)
}

fn parse_factor(text: &str) -> Result<f64, String> {
    parse_bounded(text, 1.5, 1000.0)
}

fn parse_bucket(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: Duration::from_secs(1),
        max: Duration::from_secs(3600),
        text: "1s and 1h",
    }
    .parse(text)
}

fn parse_release(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: Duration::ZERO,
        max: Duration::from_secs(3600),
        text: "0s and 1h",
    }
    .parse(text)
}

fn parse_warmup(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: Duration::ZERO,
        max: Duration::from_secs(86_400),
        text: "0s and 24h",
    }
    .parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_one_line_errors() {
        assert_eq!(parse_floor("100").unwrap(), 100.0);
        for bad in ["0", "nan", "inf", "1e99", "-5", "x"] {
            let e = parse_floor(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse_factor("1").is_err());
        assert!(parse_bucket("500ms").is_err());
        assert_eq!(parse_release("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn the_state_directory_falls_back_to_systemds() {
        let args = AttackArgs {
            no_attacks: false,
            attack_floor: 100.0,
            attack_factor: 4.0,
            attack_bucket: Duration::from_secs(60),
            attack_release: Duration::from_secs(5),
            attack_warmup: Duration::from_secs(60),
            state_dir: None,
        };
        let env = |v: &'static str| move |k: &str| (k == "STATE_DIRECTORY").then(|| v.to_string());
        assert_eq!(
            args.state_dir(env("/var/lib/a:/var/lib/b")),
            Some(PathBuf::from("/var/lib/a"))
        );
        assert_eq!(args.state_dir(env("")), None);
        assert_eq!(args.state_dir(|_| None), None);
    }
}

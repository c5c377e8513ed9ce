//! Debian's `prometheus` scraping the agent every second during the
//! top-sources flood: how many series a real server creates
//! (`prometheus_tsdb_head_series_created_total`), and how many of them are
//! per-source series. The VM boot that carries the binary sets
//! `vmtest_prometheus=1` on the kernel command line, which init hands to the
//! scenario's environment.

use crate::ebpf_checks::METRICS_ADDR;
use crate::prometheus::{http_get, PrometheusServer, JOB};
use crate::top_series_scrape::bound;
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// Whether this boot's flood is scraped by a real Prometheus.
pub fn wanted() -> bool {
    std::env::var("vmtest_prometheus").is_ok_and(|v| v == "1")
}

/// The per-source series.
const TOP_SERIES: &str = r#"{__name__=~"synproxy_top_source_.+"}"#;
/// Per-source series whose source is not a /24 or /64, and those with a rank.
const BAD_SERIES: [&str; 2] = [
    r#"{__name__=~"synproxy_top_source_.+",source!~".*/(24|64)"}"#,
    r#"{__name__=~"synproxy_top_source_.+",rank!=""}"#,
];

/// What the server saw, read after the flood.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    /// `prometheus_tsdb_head_series_created_total` from the server's own
    /// `/metrics`.
    pub created: u64,
    /// Every series of the job in the head (the agent's and the five a
    /// scrape adds: `up`, `scrape_duration_seconds`...).
    pub job_series: u64,
    /// `synproxy_top_source_*` series.
    pub top_series: u64,
    /// Per-source series with an address or a rank.
    pub bad_series: u64,
    pub scrapes: u64,
    pub scrapes_up: u64,
}

/// A running server scraping [`METRICS_ADDR`].
pub struct RealPrometheus {
    server: PrometheusServer,
}

impl RealPrometheus {
    pub fn start() -> Result<Self> {
        Ok(Self {
            server: PrometheusServer::start(&[METRICS_ADDR.to_string()])
                .context("starting the guest's prometheus")?,
        })
    }

    fn scalar(&self, expr: &str) -> Result<u64> {
        Ok(self
            .server
            .query(expr)?
            .first()
            .map_or(0, |s| s.value.max(0.0) as u64))
    }

    /// How many series the server holds that match `selector`, whenever
    /// they had samples (`GET /api/v1/series`).
    fn series(&self, selector: &str) -> Result<u64> {
        let path = format!(
            "/api/v1/series?match[]={}&start=0",
            crate::prometheus::encode(selector)
        );
        let (status, _, body) = http_get(self.server.addr(), &path, None)?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("series {selector}: not JSON ({status}): {body}"))?;
        match json["data"].as_array() {
            Some(list) if json["status"] == "success" => Ok(list.len() as u64),
            _ => bail!("series {selector}: {body}"),
        }
    }

    /// Waits until a scrape of the agent answered: Prometheus applies new
    /// targets a few seconds after it is ready, and a flood sent before that
    /// would reach it only as the rounds after the flood.
    pub fn scraping(self) -> Result<Self> {
        let up = format!("sum(sum_over_time(up{{job=\"{JOB}\"}}[1h]))");
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.scalar(&up)? < 1 {
            if Instant::now() > deadline {
                bail!(
                    "prometheus scraped the agent in 90 s {} times, none answered; its log:\n{}",
                    self.scrapes()?,
                    self.server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(self)
    }

    /// Waits for two more scrapes, so the round exposed now (the flood's
    /// last, with its top sources) is scraped however short the flood was.
    pub fn scraped_now(self) -> Result<Self> {
        self.more_scrapes(2)?;
        Ok(self)
    }

    fn more_scrapes(&self, wanted: u64) -> Result<()> {
        let before = self.scrapes()?;
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.scrapes()? < before + wanted {
            if Instant::now() > deadline {
                bail!(
                    "prometheus made {} scrapes in 90 s (wanted {wanted}); its log:\n{}",
                    self.scrapes()? - before,
                    self.server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn scrapes(&self) -> Result<u64> {
        self.scalar(&format!("sum(count_over_time(up{{job=\"{JOB}\"}}[1h]))"))
    }

    /// Waits for two more scrapes (so the agent's last round is in the
    /// head), then reads the figures.
    pub fn finish(self) -> Result<Figures> {
        self.more_scrapes(2)?;
        let (status, _, body) = http_get(self.server.addr(), "/metrics", None)?;
        if status != 200 {
            bail!("prometheus' own /metrics answered {status}");
        }
        Ok(Figures {
            created: created_total(&body)?,
            job_series: self.series(&format!("{{job=\"{JOB}\"}}"))?,
            top_series: self.series(TOP_SERIES)?,
            bad_series: self.series(BAD_SERIES[0])? + self.series(BAD_SERIES[1])?,
            scrapes: self.scrapes()?,
            scrapes_up: self.scalar(&format!("sum(sum_over_time(up{{job=\"{JOB}\"}}[1h]))"))?,
        })
    }
}

/// `prometheus_tsdb_head_series_created_total` of a Prometheus exposition.
pub fn created_total(exposition: &str) -> Result<u64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix("prometheus_tsdb_head_series_created_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no prometheus_tsdb_head_series_created_total in prometheus' /metrics")
}

/// The RESULT fields and the verdict: the server scraped (at least two
/// answered scrapes), every series it created is one of the job's (so the
/// counter measures the agent), the per-source series are prefixes without
/// a rank and within [`bound`] for the rounds exposed, and with eBPF there
/// are some.
pub fn judge(
    figures: &Result<Figures>,
    rounds: usize,
    ebpf: bool,
    notes: &mut Vec<String>,
) -> (String, bool) {
    let f = match figures {
        Ok(f) => f,
        Err(e) => {
            notes.push(format!("real prometheus: {e:#}"));
            return ("prometheus_created_series=?".into(), false);
        }
    };
    let limit = bound(rounds) as u64;
    let mut pass = true;
    let mut fail = |why: String| {
        pass = false;
        notes.push(format!("real prometheus: {why}"));
    };
    if f.scrapes_up < 2 {
        fail(format!(
            "{} of {} scrapes answered (wanted 2 or more)",
            f.scrapes_up, f.scrapes
        ));
    }
    if f.created != f.job_series {
        fail(format!(
            "head_series_created_total {} but the job has {} series",
            f.created, f.job_series
        ));
    }
    if f.top_series > limit {
        fail(format!(
            "{} per-source series, over the bound {limit}",
            f.top_series
        ));
    }
    if f.bad_series > 0 {
        fail(format!(
            "{} per-source series with an address or a rank",
            f.bad_series
        ));
    }
    if ebpf && f.top_series == 0 {
        fail("no per-source series".into());
    }
    (
        format!(
            "prometheus_created_series={} prometheus_top_source_series={} prometheus_scrapes={}/{}",
            f.created, f.top_series, f.scrapes_up, f.scrapes
        ),
        pass,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Figures {
        Figures {
            created: 300,
            job_series: 300,
            top_series: 120,
            bad_series: 0,
            scrapes: 40,
            scrapes_up: 40,
        }
    }

    #[test]
    fn created_total_is_read_from_the_exposition() {
        let body = "# TYPE prometheus_tsdb_head_series_created_total counter\n\
                    prometheus_tsdb_head_series_created_total 1234\n\
                    prometheus_tsdb_head_series 1000\n";
        assert_eq!(created_total(body).ok(), Some(1234));
        assert!(created_total("prometheus_tsdb_head_series 1\n").is_err());
    }

    #[test]
    fn judge_passes_within_the_bound_and_fails_each_broken_figure() {
        let mut notes = Vec::new();
        let (text, pass) = judge(&Ok(good()), 3, true, &mut notes);
        assert!(pass, "{notes:?}");
        assert!(text.contains("prometheus_created_series=300"), "{text}");
        let broken = [
            Figures {
                scrapes_up: 1,
                ..good()
            },
            Figures {
                created: 301,
                ..good()
            },
            Figures {
                top_series: bound(3) as u64 + 1,
                ..good()
            },
            Figures {
                bad_series: 2,
                ..good()
            },
            Figures {
                top_series: 0,
                ..good()
            },
        ];
        for f in broken {
            let mut notes = Vec::new();
            let (_, pass) = judge(&Ok(f.clone()), 3, true, &mut notes);
            assert!(!pass, "{f:?} passed");
            assert_eq!(notes.len(), 1, "{notes:?}");
        }
        let mut notes = Vec::new();
        assert!(!judge(&Err(anyhow::anyhow!("no binary")), 3, true, &mut notes).1);
        assert!(notes[0].contains("no binary"));
    }
}

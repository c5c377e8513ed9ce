//! The exposition: families and samples from one [`Published`], encoded by
//! `prometheus-client` as the text format 0.0.4 or OpenMetrics 1.0.0.

use super::top_port_series::top_port_families;
use super::top_series::top_source_families;
use super::{Published, OPENMETRICS_CONTENT_TYPE, OWN_NETNS_LABEL, STATUSES};
use crate::sinks::line_protocol::sanitized_tag;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// OpenMetrics when the `Accept` headers rank it at least as high as any
    /// text format the agent could send instead; the text format otherwise.
    pub fn for_accept<'a>(headers: impl IntoIterator<Item = &'a str>) -> Format {
        let mut openmetrics: f32 = 0.0;
        let mut text: f32 = 0.0;
        for header in headers {
            for item in header.split(',') {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let mut q = 1.0f32;
                for param in parts {
                    if let Some(("q", value)) =
                        param.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
                    {
                        q = value.parse().unwrap_or(0.0);
                    }
                }
                match media.as_str() {
                    "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                    "text/plain" | "text/*" | "*/*" => text = text.max(q),
                    _ => {}
                }
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Renders `published` in `format`.
pub fn render(published: &Published, format: Format) -> Result<String, std::fmt::Error> {
    render_shared(Arc::new(published.clone()), format)
}

/// [`render`] without a copy (what a scrape does with the published value).
pub(super) fn render_shared(
    published: Arc<Published>,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(published)));
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

pub(super) type Labels = Vec<(&'static str, String)>;

/// One metric family: name (without `_total` or the unit), help, unit, type
/// and its samples.
pub(super) struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

#[cfg(test)]
impl Family {
    /// Its samples (series).
    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Value {
    Count(u64),
    Gauge(f64),
}

impl Family {
    pub(super) fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            unit: None,
            kind,
            samples: Vec::new(),
        }
    }

    pub(super) fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    pub(super) fn count(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }

    pub(super) fn gauge(&mut self, labels: Labels, value: f64) {
        self.samples.push((labels, Value::Gauge(value)));
    }

    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        for (labels, value) in &self.samples {
            if self.kind == MetricType::Info {
                metric.encode_info(labels)?;
                continue;
            }
            let sample = metric.encode_family(labels)?;
            match (self.kind, value) {
                (MetricType::Counter, Value::Count(v)) => ConstCounter::new(*v).encode(sample)?,
                (MetricType::Counter, Value::Gauge(v)) => ConstCounter::new(*v).encode(sample)?,
                (_, Value::Count(v)) => {
                    ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(sample)?
                }
                (_, Value::Gauge(v)) => ConstGauge::new(*v).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// The collector behind each scrape: renders one [`Published`].
#[derive(Debug)]
pub(super) struct Exposition(Arc<Published>);

mod agent;
pub(super) mod attacks;
mod defense;
mod ebpf;
mod stack;
mod synproxy;

/// The `netns` label value: the line protocol tag as a reader gets it back,
/// [`OWN_NETNS_LABEL`] for the agent's own namespace.
pub fn netns_label(netns: Option<&str>) -> String {
    match netns {
        Some(name) => sanitized_tag(name),
        None => OWN_NETNS_LABEL.to_string(),
    }
}

impl Exposition {
    /// Every family, grouped by what it describes, in exposition order.
    pub(super) fn families(&self) -> Vec<Family> {
        let published = &*self.0;
        let mut agent_build = Family::new(
            "synproxy_agent_build",
            "The agent's version (always 1).",
            MetricType::Info,
        );
        agent_build.gauge(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        let mut rounds = Family::new(
            "synproxy_agent_rounds",
            "Sampling rounds since the agent started.",
            MetricType::Counter,
        );
        rounds.count(Vec::new(), published.rounds);
        let mut families = vec![agent_build, rounds];
        families.extend(published.attacks.families());
        let Some(snapshot) = &published.snapshot else {
            return families;
        };
        let rows = synproxy::rows(snapshot);
        families.extend(synproxy::families(&rows));
        families.extend(stack::families(snapshot));
        families.extend(defense::families(snapshot));
        families.extend(ebpf::namespace_families(published, snapshot, &rows));
        families.extend(top_source_families(snapshot, published.top_series));
        families.extend(top_port_families(snapshot));
        if let Some(probes) = &snapshot.probes {
            families.extend(ebpf::probe_families(published, probes));
        }
        families.extend(ebpf::program_families(&snapshot.agent));
        families.extend(agent::health_families(snapshot));
        families
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

//! The Grafana dashboard of deploy/grafana as data: its panels' queries and
//! its variables' queries, with Grafana's variables substituted, run against
//! a real Prometheus ([`crate::prometheus::PrometheusServer`]).

use crate::prometheus::{PrometheusServer, Series};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The dashboard file, from the source tree.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/synproxy-agent.json")
}

pub fn load() -> Result<Value> {
    let path = path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// One query of one panel.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
    pub legend: String,
}

impl PanelQuery {
    /// The labels its legend names (`{{netns}}`): each series must carry
    /// them, or the panel shows series Grafana cannot tell apart.
    pub fn legend_labels(&self) -> Vec<String> {
        self.legend
            .split("{{")
            .skip(1)
            .filter_map(|part| part.split_once("}}"))
            .map(|(name, _)| name.trim().to_string())
            .collect()
    }

    /// Series only an agent with eBPF exports (kprobes or fentry): its
    /// per-event counts, reconcile state, probe health and top sources.
    pub fn needs_ebpf(&self) -> bool {
        self.expr.contains("synproxy_ebpf_") || self.expr.contains("synproxy_top_source_")
    }
}

/// Every query of every panel (rows' nested panels included).
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                panel: panel["title"].as_str().unwrap_or_default().to_string(),
                expr: target["expr"].as_str().unwrap_or_default().to_string(),
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    out
}

/// A query variable `label_values(SELECTOR, LABEL)`: (name, selector, label).
pub fn label_values_variables(dashboard: &Value) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or_default().to_string();
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .with_context(|| format!("variable {name}: not label_values(...): {query:?}"))?;
        let Some((selector, label)) = inner.rsplit_once(',') else {
            bail!("variable {name}: no label in {query:?}");
        };
        out.push((name, selector.trim().to_string(), label.trim().to_string()));
    }
    Ok(out)
}

/// The names of the dashboard's variables.
pub fn variable_names(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

/// What Grafana would send: `$__rate_interval` and `$__range` as a window
/// long enough for scrapes every second, then `$name` / `${name}` from `vars`.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "15s");
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// What the queries were run with and what must come back.
pub struct Expect<'a> {
    /// Values of the dashboard variables (regular expressions, as Grafana
    /// sends a multi-value selection).
    pub vars: &'a [(&'a str, &'a str)],
    /// Namespaces with traffic, selected by `$netns`: every query whose
    /// legend names `netns` must return each of them, and no other.
    pub namespaces: &'a [String],
}

/// Runs every panel query and every variable query of `dashboard` against
/// `server`: each must return series carrying the labels its legend names,
/// for each selected namespace where it names `netns` (no empty panel),
/// except the eBPF ones, which must parse and run (this agent runs without
/// eBPF: an empty answer). Returns one line per query.
pub fn check_queries(
    server: &PrometheusServer,
    dashboard: &Value,
    expect: &Expect,
) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    for query in panel_queries(dashboard) {
        let expr = substitute(&query.expr, expect.vars);
        let series = server
            .query(&expr)
            .map_err(|e| format!("panel {:?}: {e:#}", query.panel))?;
        if query.needs_ebpf() {
            report.push(format!(
                "eBPF-only, parsed and ran ({} series): {:?}: {expr}",
                series.len(),
                query.panel
            ));
            continue;
        }
        check_series(&query, &expr, &series, expect.namespaces)?;
        report.push(format!(
            "{} series: {:?}: {expr}",
            series.len(),
            query.panel
        ));
    }
    for (name, selector, label) in
        label_values_variables(dashboard).map_err(|e| format!("{e:#}"))?
    {
        let expr = substitute(&format!("count by ({label}) ({selector})"), expect.vars);
        let series = server
            .query(&expr)
            .map_err(|e| format!("variable {name}: {e:#}"))?;
        let values: BTreeSet<&str> = series
            .iter()
            .filter_map(|s| s.labels.get(&label).map(String::as_str))
            .collect();
        if values.is_empty() {
            return Err(format!("variable {name}: no values from {expr}"));
        }
        if label == "netns" {
            for ns in expect.namespaces {
                if !values.contains(ns.as_str()) {
                    return Err(format!("variable {name}: {ns} missing from {values:?}"));
                }
            }
        }
        report.push(format!("variable {name}: {values:?}"));
    }
    Ok(report)
}

fn check_series(
    query: &PanelQuery,
    expr: &str,
    series: &[Series],
    namespaces: &[String],
) -> Result<(), String> {
    if series.is_empty() {
        return Err(format!("panel {:?}: no series from {expr}", query.panel));
    }
    let labels = query.legend_labels();
    for one in series {
        for label in &labels {
            if one.labels.get(label).is_none_or(|v| v.is_empty()) {
                return Err(format!(
                    "panel {:?}: series {:?} lacks the legend's label {label} ({expr})",
                    query.panel, one.labels
                ));
            }
        }
    }
    if labels.iter().any(|l| l == "netns") {
        let got: BTreeSet<&str> = series
            .iter()
            .filter_map(|s| s.labels.get("netns").map(String::as_str))
            .collect();
        let want: BTreeSet<&str> = namespaces.iter().map(String::as_str).collect();
        if got != want {
            return Err(format!(
                "panel {:?}: namespaces {got:?}, want the selected {want:?} ({expr})",
                query.panel
            ));
        }
    }
    Ok(())
}

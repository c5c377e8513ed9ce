//! Prometheus `/metrics`: the latest snapshot, rendered on each scrape.
//!
//! Each round the sink adds the round's eBPF events to its own cumulative
//! counters (per series, so they go on across probe re-attaches and label
//! changes) and publishes the snapshot with them as one immutable value
//! (`tokio::sync::watch`). A scrape takes the value last published and
//! renders it: it never waits for a round in progress, and a round never
//! waits for a scrape. Exposition by the Prometheus project's
//! `prometheus-client` crate: OpenMetrics 1.0 when the scraper's `Accept`
//! prefers it, the text format 0.0.4 otherwise. The HTTP server is hyper's,
//! on the agent's runtime.
//!
//! Namespaces not found in a round stay in the exposition, with the counters
//! they had, as long as the sampler retains them (their per-round gauges go at
//! once); then they leave. A retained namespace whose label a present one has
//! taken is left out (labels are unique in each exposition).

use super::gate::Gate;
use super::line_protocol::sanitized_tag;
use super::{Ended, Sink};
use crate::cli::parse_listen_addr;
use crate::reconcile::ebpf::Status;
use crate::reconcile::join::FAMILIES;
use crate::sample::{InfluxHealth, SeriesId, Snapshot, DIAG_NAMES};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info, warn};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use synproxy_common::{Counter, COUNTER_COUNT};
use tokio::sync::{watch, Semaphore};

/// The `netns` label of the agent's own namespace (run without `--netns`,
/// where line protocol has no `netns` tag), so every series has the same
/// label set.
pub const OWN_NETNS_LABEL: &str = "self";

/// Content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconcile states, in the order of the per-series round counters.
const STATUSES: [Status; 4] = [
    Status::Exact,
    Status::Lagging,
    Status::Missed,
    Status::ProcOnly,
];

/// The `--prometheus-listen` socket, bound at start-up so that a bad address
/// or a port in use is a start-up error.
#[derive(Debug)]
pub struct Listener {
    socket: std::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `text` (`IP:PORT`); the error is one line naming the flag.
    pub fn bind(text: &str) -> Result<Self, String> {
        let addr =
            parse_listen_addr(text).map_err(|e| format!("--prometheus-listen {text:?}: {e}"))?;
        let socket = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--prometheus-listen {text}: {}", describe_bind_error(&e)))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("--prometheus-listen {text}: {e}"))?;
        let addr = socket.local_addr().unwrap_or(addr);
        Ok(Self { socket, addr })
    }

    /// The address actually bound (port 0 picks a free port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn describe_bind_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (another process listens on that port)".into()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "address not available (no interface of this host has it)".into()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        _ => format!("cannot listen: {e}"),
    }
}

/// What the sink adds up itself, per series, across rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EbpfTotals {
    /// eBPF-counted events per family and counter (sum of the rounds' events).
    pub events: [[u64; COUNTER_COUNT]; 2],
    /// Rounds per reconcile state, in [`STATUSES`] order.
    pub rounds: [u64; 4],
}

/// What a scrape renders: the latest snapshot and the sink's own totals.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub snapshot: Option<Arc<Snapshot>>,
    pub ebpf: HashMap<SeriesId, EbpfTotals>,
    /// Events the probes lost, all namespaces (sum of the rounds').
    pub probe_misses: u64,
    /// Rounds sampled since start.
    pub rounds: u64,
}

impl Published {
    /// Adds one round: its eBPF events to the totals, and the snapshot as the
    /// latest. State of series the sampler no longer keeps is dropped.
    pub fn add(&mut self, snapshot: &Arc<Snapshot>) {
        self.rounds += 1;
        for ns in &snapshot.namespaces {
            let Some(families) = &ns.ebpf else {
                continue;
            };
            let totals = self.ebpf.entry(ns.series).or_default();
            for (f, sample) in families.iter().enumerate() {
                for c in 0..COUNTER_COUNT {
                    totals.events[f][c] = totals.events[f][c].saturating_add(sample.events[c]);
                }
            }
            if let Some(i) = STATUSES.iter().position(|s| *s == families[0].status) {
                totals.rounds[i] += 1;
            }
        }
        if let Some(probes) = &snapshot.probes {
            self.probe_misses = self.probe_misses.saturating_add(probes.probe_misses);
        }
        let kept: HashSet<SeriesId> = snapshot
            .namespaces
            .iter()
            .map(|n| n.series)
            .chain(snapshot.retained.iter().map(|r| r.series))
            .collect();
        self.ebpf.retain(|id, _| kept.contains(id));
        self.snapshot = Some(Arc::clone(snapshot));
    }
}

/// The sink: accumulates and publishes; the server task renders.
pub struct PrometheusSink {
    published: Published,
    tx: watch::Sender<Arc<Published>>,
}

impl PrometheusSink {
    /// Starts serving on `listener` (on the current tokio runtime); requests
    /// are read once `gate` is open.
    pub fn start(listener: Listener, gate: Gate) -> Result<Self, String> {
        let addr = listener.addr;
        let socket = tokio::net::TcpListener::from_std(listener.socket)
            .map_err(|e| format!("--prometheus-listen {addr}: {e}"))?;
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        tokio::spawn(serve(socket, rx, gate));
        info!("Prometheus metrics on http://{addr}/metrics");
        Ok(Self {
            published: Published::default(),
            tx,
        })
    }
}

impl Sink for PrometheusSink {
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        self.published.add(snapshot);
        self.tx.send_replace(Arc::new(self.published.clone()));
        Ok(())
    }

    fn finish(&mut self, _deadline: Instant) -> Result<(), Ended> {
        Ok(())
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: watch::Receiver<Arc<Published>>,
    gate: Gate,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failing = false;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if std::mem::take(&mut failing) {
                    info!("--prometheus-listen: accepting connections again");
                }
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, retry.
                if !std::mem::replace(&mut failing, true) {
                    warn!("--prometheus-listen: cannot accept connections: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let mut gate = gate.clone();
        tokio::spawn(async move {
            // Accepted, but not read before the capability drop.
            if !gate.opened().await {
                return;
            }
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let published = Arc::clone(&state.borrow());
                async move { Ok::<_, Infallible>(respond(&request, &published)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!("metrics connection: {e}");
            }
            drop(slot);
        });
    }
}

fn respond<B>(request: &Request<B>, published: &Arc<Published>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = request.method();
    if path != "/metrics" && path != "/" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/" {
        return plain(
            StatusCode::OK,
            "synproxy-agent: Prometheus metrics at /metrics\n",
        );
    }
    let format = Format::for_accept(
        request
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    match render_shared(Arc::clone(published), format) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

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
fn render_shared(published: Arc<Published>, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(published)));
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name (without `_total` or the unit), help, unit, type
/// and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Count(u64),
    Gauge(f64),
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            unit: None,
            kind,
            samples: Vec::new(),
        }
    }

    fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    fn count(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }

    fn gauge(&mut self, labels: Labels, value: f64) {
        self.samples.push((labels, Value::Gauge(value)));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
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
struct Exposition(Arc<Published>);

/// Help of the /proc counter families, in kernel order.
fn proc_help(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "SYNs answered by SYNPROXY with a cookie SYN/ACK (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieInvalid => "ACKs with a bad or expired SYN cookie (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieValid => "ACKs whose SYN cookie checked out: connections handed to the server (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieRetrans => "ACKs for a connection whose SYN to the server is still pending (kernel counter, /proc/net/stat/synproxy).",
        Counter::ConnReopened => "SYNs reopening a closed tracked connection (kernel counter, /proc/net/stat/synproxy).",
    }
}

/// `synproxy_<counter>` (rendered `..._total`).
fn proc_family_name(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "synproxy_syn_received",
        Counter::CookieInvalid => "synproxy_cookie_invalid",
        Counter::CookieValid => "synproxy_cookie_valid",
        Counter::CookieRetrans => "synproxy_cookie_retrans",
        Counter::ConnReopened => "synproxy_conn_reopened",
    }
}

/// The `netns` label value: the line protocol tag as a reader gets it back,
/// [`OWN_NETNS_LABEL`] for the agent's own namespace.
pub fn netns_label(netns: Option<&str>) -> String {
    match netns {
        Some(name) => sanitized_tag(name),
        None => OWN_NETNS_LABEL.to_string(),
    }
}

impl Exposition {
    fn families(&self) -> Vec<Family> {
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
        let Some(snapshot) = &published.snapshot else {
            return families;
        };

        // Which namespaces: those read this round, then the retained ones
        // (most recently seen first) whose label is still free.
        let mut rows: Vec<(SeriesId, String, [u64; COUNTER_COUNT], bool)> = Vec::new();
        let mut labels: HashSet<String> = HashSet::new();
        for ns in &snapshot.namespaces {
            let label = netns_label(ns.sample.netns.as_deref());
            let totals =
                Counter::ALL.map(|c| ns.sample.totals[crate::fields::Field::Counter(c).index()]);
            if labels.insert(label.clone()) {
                rows.push((ns.series, label, totals, true));
            }
        }
        let mut retained: Vec<_> = snapshot.retained.iter().collect();
        retained.sort_by_key(|r| (r.missing_rounds, r.series));
        for r in retained {
            let label = netns_label(r.netns.as_deref());
            if labels.insert(label.clone()) {
                let totals =
                    Counter::ALL.map(|c| r.totals[crate::fields::Field::Counter(c).index()]);
                rows.push((r.series, label, totals, false));
            }
        }

        for counter in Counter::ALL {
            let mut family = Family::new(
                proc_family_name(counter),
                proc_help(counter),
                MetricType::Counter,
            );
            for (_, label, totals, _) in &rows {
                family.count(vec![("netns", label.clone())], totals[counter.index()]);
            }
            families.push(family);
        }

        // eBPF, per namespace.
        let mut events = Family::new(
            "synproxy_ebpf_events",
            "SYNPROXY events counted by the eBPF probes, per namespace, address family and counter (added up by the agent from each round's events; reconciled with the kernel counters).",
            MetricType::Counter,
        );
        let mut reconcile_rounds = Family::new(
            "synproxy_ebpf_reconcile_rounds",
            "Rounds per reconcile state of the eBPF counts with the kernel counters (exact, lagging, missed, proc-only).",
            MetricType::Counter,
        );
        for (series, label, _, _) in &rows {
            let Some(totals) = published.ebpf.get(series) else {
                continue;
            };
            for (f, family) in FAMILIES.into_iter().enumerate() {
                for counter in Counter::ALL {
                    events.count(
                        vec![
                            ("netns", label.clone()),
                            ("family", family.to_string()),
                            ("counter", counter.name().to_string()),
                        ],
                        totals.events[f][counter.index()],
                    );
                }
            }
            for (i, status) in STATUSES.into_iter().enumerate() {
                reconcile_rounds.count(
                    vec![
                        ("netns", label.clone()),
                        ("status", status.name().to_string()),
                    ],
                    totals.rounds[i],
                );
            }
        }
        let mut peaks = Family::new(
            "synproxy_ebpf_peak_rate",
            "Highest rate in the last round, events per second over one --rate-resolution bucket, per namespace, address family and counter.",
            MetricType::Gauge,
        );
        let mut status = Family::new(
            "synproxy_ebpf_reconcile_status",
            "Reconcile state of the last round, one series per state: 1 for the current one, 0 for the others.",
            MetricType::Gauge,
        );
        for ns in &snapshot.namespaces {
            let Some(families) = &ns.ebpf else {
                continue;
            };
            let label = netns_label(ns.sample.netns.as_deref());
            if !rows
                .iter()
                .any(|(id, l, _, present)| *present && *id == ns.series && *l == label)
            {
                continue;
            }
            for sample in families {
                for counter in Counter::ALL {
                    let rate = sample.peak_rates[counter.index()];
                    peaks.gauge(
                        vec![
                            ("netns", label.clone()),
                            ("family", sample.family.to_string()),
                            ("counter", counter.name().to_string()),
                        ],
                        if rate.is_finite() { rate.max(0.0) } else { 0.0 },
                    );
                }
            }
            for s in STATUSES {
                status.count(
                    vec![("netns", label.clone()), ("status", s.name().to_string())],
                    u64::from(s == families[0].status),
                );
            }
        }
        families.extend([events, peaks, status, reconcile_rounds]);
        families.extend(top_source_families(snapshot));

        // eBPF, agent-wide.
        if let Some(probes) = &snapshot.probes {
            let mut probe_misses = Family::new(
                "synproxy_ebpf_probe_misses",
                "Events the probes lost, all namespaces (the kernel cannot tell whose): kprobe misses, BPF recursion misses of the counting programs, events whose namespace could not be read.",
                MetricType::Counter,
            );
            probe_misses.count(Vec::new(), published.probe_misses);
            let mut recursion = Family::new(
                "synproxy_ebpf_recursion_misses",
                "Runs of the program the kernel skipped (BPF recursion protection), since load.",
                MetricType::Counter,
            );
            for (program, n) in &probes.program_recursion {
                recursion.count(vec![("program", (*program).to_string())], *n);
            }
            let mut hits = Family::new(
                "synproxy_ebpf_kprobe_hits",
                "Hits of the kprobe since it was attached (kprobe_profile).",
                MetricType::Counter,
            );
            let mut missed = Family::new(
                "synproxy_ebpf_kprobe_missed",
                "Misses of the kprobe since it was attached (kprobe_profile; kretprobes include maxactive misses).",
                MetricType::Counter,
            );
            for (probe, stats) in &probes.probes {
                hits.count(vec![("probe", (*probe).to_string())], stats.hits);
                missed.count(vec![("probe", (*probe).to_string())], stats.missed);
            }
            let mut anomalies = Family::new(
                "synproxy_ebpf_anomalies",
                "Kernel-side diagnostics since load, by kind: untracked_events (events of namespaces not counted per namespace; not a loss), rate_late_events (missing from peak rates only), unmatched_returns, read_failures.",
                MetricType::Counter,
            );
            for (slot, kind) in DIAG_NAMES {
                anomalies.count(vec![("kind", kind.to_string())], probes.diag[slot as usize]);
            }
            let mut map_memory = Family::new(
                "synproxy_ebpf_map_memory",
                "Kernel memory the eBPF maps pin (memlock).",
                MetricType::Gauge,
            )
            .unit(Unit::Bytes);
            map_memory.count(Vec::new(), probes.map_bytes);
            let mut probe_type = Family::new(
                "synproxy_ebpf_probe_type",
                "The kind of BPF programs that count the events: 1 for the one in use (--probes, or kprobe after a fallback), 0 for the other.",
                MetricType::Gauge,
            );
            for kind in ["kprobe", "fentry"] {
                probe_type.count(
                    vec![("type", kind.to_string())],
                    u64::from(kind == probes.probe_type),
                );
            }
            families.extend([
                probe_misses,
                recursion,
                hits,
                missed,
                anomalies,
                map_memory,
                probe_type,
            ]);
            if let Some(map) = &probes.sources {
                let mut entries = Family::new(
                    "synproxy_ebpf_source_map_entries",
                    "Entries in the kernel's per-source map (--top).",
                    MetricType::Gauge,
                );
                entries.count(Vec::new(), map.entries);
                let mut capacity = Family::new(
                    "synproxy_ebpf_source_map_capacity",
                    "Size of the kernel's per-source map (--top-map-entries).",
                    MetricType::Gauge,
                );
                capacity.count(Vec::new(), u64::from(map.capacity));
                let mut evictions = Family::new(
                    "synproxy_ebpf_source_evictions",
                    "Sources the per-source map evicted (least recently seen) since load: more sources than --top-map-entries.",
                    MetricType::Counter,
                );
                evictions.count(Vec::new(), map.evictions);
                let mut failures = Family::new(
                    "synproxy_ebpf_source_insert_failures",
                    "Events not counted per source because the map made no entry for them, since load.",
                    MetricType::Counter,
                );
                failures.count(Vec::new(), map.insert_failures);
                let mut memory = Family::new(
                    "synproxy_ebpf_source_map_memory",
                    "Kernel memory the per-source map pins (memlock; part of synproxy_ebpf_map_memory_bytes).",
                    MetricType::Gauge,
                )
                .unit(Unit::Bytes);
                memory.count(Vec::new(), map.map_bytes);
                families.extend([entries, capacity, evictions, failures, memory]);
            }
        }
        let mut run_time = Family::new(
            "synproxy_ebpf_program_run_time",
            "Time the eBPF program ran, while kernel.bpf_stats_enabled is 1.",
            MetricType::Counter,
        )
        .unit(Unit::Seconds);
        let mut run_count = Family::new(
            "synproxy_ebpf_program_runs",
            "Runs of the eBPF program, while kernel.bpf_stats_enabled is 1.",
            MetricType::Counter,
        );
        for p in &snapshot.agent.programs {
            run_time.gauge(
                vec![("program", p.program.to_string())],
                p.run_time_ns as f64 / 1e9,
            );
            run_count.count(vec![("program", p.program.to_string())], p.run_count);
        }

        // The agent.
        let agent = &snapshot.agent;
        let mut enabled = Family::new(
            "synproxy_agent_ebpf_enabled",
            "1 if the eBPF programs are loaded (not --no-ebpf, and loading worked).",
            MetricType::Gauge,
        );
        enabled.count(Vec::new(), u64::from(agent.ebpf_enabled));
        let mut attached = Family::new(
            "synproxy_agent_ebpf_attached",
            "1 while the eBPF probes are attached.",
            MetricType::Gauge,
        );
        attached.count(Vec::new(), u64::from(agent.ebpf_attached));
        let mut duration = Family::new(
            "synproxy_agent_last_round_duration",
            "How long the last sampling round took.",
            MetricType::Gauge,
        )
        .unit(Unit::Seconds);
        duration.gauge(Vec::new(), agent.round_duration.as_secs_f64());
        let mut timestamp = Family::new(
            "synproxy_agent_last_round_timestamp",
            "When the last sampling round ended, seconds since the Unix epoch.",
            MetricType::Gauge,
        )
        .unit(Unit::Seconds);
        timestamp.gauge(Vec::new(), snapshot.timestamp_ns as f64 / 1e9);
        let mut namespaces = Family::new(
            "synproxy_agent_namespaces",
            "Namespaces by state in the last round: read, retained (not found, kept for their return), failed (could not be read).",
            MetricType::Gauge,
        );
        namespaces.count(
            vec![("state", "read".into())],
            snapshot.namespaces.len() as u64,
        );
        namespaces.count(
            vec![("state", "retained".into())],
            snapshot.retained.len() as u64,
        );
        namespaces.count(
            vec![("state", "failed".into())],
            snapshot.failures.len() as u64,
        );
        families.extend([
            run_time, run_count, enabled, attached, duration, timestamp, namespaces,
        ]);
        if let Some(influx) = &agent.influx {
            families.extend(influx_families(influx));
        }
        families
    }
}

/// This round's top sources: at most `--top` series per namespace, family
/// and counter, labelled by rank and source. Only the last round is shown, so
/// a source that leaves the top N leaves the exposition at once: the
/// cardinality is bounded by N, whatever the number of attacking sources.
fn top_source_families(snapshot: &Snapshot) -> [Family; 2] {
    let mut events = Family::new(
        "synproxy_top_source_events",
        "Events of the source (an address, or a prefix with --top-prefix-v4/-v6) in the last round, for the --top sources per namespace, address family and counter, by rank (1: the most events).",
        MetricType::Gauge,
    );
    let mut share = Family::new(
        "synproxy_top_source_share",
        "The source's share of the counter's events in the namespace and address family in the last round (0 to 1), for the --top sources.",
        MetricType::Gauge,
    );
    // One list per namespace label, family and counter (labels are unique).
    let mut seen = HashSet::new();
    for list in &snapshot.top_sources {
        let label = netns_label(list.netns.as_deref());
        if !seen.insert((label.clone(), list.family, list.counter)) {
            continue;
        }
        let mut sources = HashSet::new();
        for (i, entry) in list.entries.iter().enumerate() {
            let source = sanitized_tag(&entry.source);
            if !sources.insert(source.clone()) {
                continue;
            }
            let labels = vec![
                ("netns", label.clone()),
                ("family", list.family.to_string()),
                ("counter", list.counter.name().to_string()),
                ("rank", (i + 1).to_string()),
                ("source", source),
            ];
            events.count(labels.clone(), entry.events);
            share.gauge(
                labels,
                if entry.share.is_finite() {
                    entry.share.clamp(0.0, 1.0)
                } else {
                    0.0
                },
            );
        }
    }
    [events, share]
}

/// The InfluxDB writer's health (only with `--influx-url`).
fn influx_families(influx: &InfluxHealth) -> [Family; 4] {
    let mut written = Family::new(
        "synproxy_agent_influx_written_lines",
        "Line protocol lines the InfluxDB server accepted.",
        MetricType::Counter,
    );
    written.count(Vec::new(), influx.written_lines);
    let mut dropped = Family::new(
        "synproxy_agent_influx_dropped_lines",
        "Lines dropped, oldest first, because the InfluxDB writer's buffer (--influx-buffer-lines) was full.",
        MetricType::Counter,
    );
    dropped.count(Vec::new(), influx.dropped_lines);
    let mut rejected = Family::new(
        "synproxy_agent_influx_rejected_lines",
        "Lines the InfluxDB server refused with a 4xx status other than 429 (not retried).",
        MetricType::Counter,
    );
    rejected.count(Vec::new(), influx.rejected_lines);
    let mut buffered = Family::new(
        "synproxy_agent_influx_buffered_lines",
        "Lines waiting to be written to InfluxDB (including a request in flight).",
        MetricType::Gauge,
    );
    buffered.count(Vec::new(), influx.buffered_lines);
    [written, dropped, rejected, buffered]
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Field, FIELD_COUNT};
    use crate::sample::{
        AgentHealth, EbpfSample, NamespaceSnapshot, ProbesSample, ProgramRuns, RetainedNamespace,
        Sample, TopSource, TopSources,
    };
    use crate::sources::kprobe_events::ProbeStats;

    fn totals(syn: u64, valid: u64) -> [u64; FIELD_COUNT] {
        let mut t = [0; FIELD_COUNT];
        t[Field::Counter(Counter::SynReceived).index()] = syn;
        t[Field::Counter(Counter::CookieValid).index()] = valid;
        t
    }

    fn ebpf(netns: Option<&str>, syn: [u64; 2], status: Status) -> [EbpfSample; 2] {
        std::array::from_fn(|f| {
            let mut events = [0; COUNTER_COUNT];
            events[Counter::SynReceived.index()] = syn[f];
            let mut peak_rates = [0.0; COUNTER_COUNT];
            peak_rates[Counter::SynReceived.index()] = syn[f] as f64 * 10.0;
            EbpfSample {
                netns: netns.map(str::to_string),
                family: FAMILIES[f],
                events,
                peak_rates,
                status,
                timestamp_ns: 1,
            }
        })
    }

    fn namespace(
        series: SeriesId,
        netns: Option<&str>,
        t: [u64; FIELD_COUNT],
    ) -> NamespaceSnapshot {
        NamespaceSnapshot {
            series,
            sample: Sample {
                netns: netns.map(str::to_string),
                totals: t,
                timestamp_ns: 1_795_873_250_765_150_438,
            },
            ebpf: None,
        }
    }

    fn snapshot(namespaces: Vec<NamespaceSnapshot>, probes: bool) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            timestamp_ns: 1_795_873_250_765_150_438,
            namespaces,
            retained: Vec::new(),
            failures: Vec::new(),
            probes: probes.then(|| ProbesSample {
                attached: true,
                probe_type: "kprobe",
                probe_misses: 2,
                recursion_misses: 1,
                program_recursion: vec![("ack4", 1), ("synack4", 0)],
                map_bytes: 2_797_568,
                probes: vec![
                    (
                        "synack4",
                        ProbeStats {
                            hits: 20,
                            missed: 0,
                        },
                    ),
                    ("ack4_ret", ProbeStats { hits: 5, missed: 1 }),
                ],
                diag: [0, 1, 0, 0],
                sources: Some(crate::sample::SourceMapStats {
                    entries: 40,
                    capacity: 65536,
                    evictions: 3,
                    insert_failures: 0,
                    map_bytes: 6_291_456,
                }),
                timestamp_ns: 1,
            }),
            agent: AgentHealth {
                round_duration: Duration::from_micros(1500),
                ebpf_enabled: probes,
                ebpf_attached: probes,
                ebpf_off: (!probes).then(|| "--no-ebpf".into()),
                programs: if probes {
                    vec![ProgramRuns {
                        program: "ack4",
                        run_time_ns: 2_500_000_000,
                        run_count: 7,
                    }]
                } else {
                    Vec::new()
                },
                influx: None,
            },
            top_sources: Vec::new(),
        })
    }

    /// The sample lines of `text` (no comments), without the `# EOF`.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    /// An eBPF round in two namespaces, the own-namespace label, and the
    /// eBPF totals the sink adds up.
    fn ebpf_published() -> Published {
        let mut published = Published::default();
        let mut blue = namespace(1, Some("blue"), totals(30, 4));
        blue.ebpf = Some(ebpf(Some("blue"), [20, 10], Status::Exact));
        let mut init = namespace(2, Some("init"), totals(0, 0));
        init.ebpf = Some(ebpf(Some("init"), [0, 0], Status::ProcOnly));
        published.add(&snapshot(vec![blue.clone(), init.clone()], true));
        blue.sample.totals = totals(45, 4);
        blue.ebpf = Some(ebpf(Some("blue"), [10, 5], Status::Exact));
        published.add(&snapshot(vec![blue, init], true));
        published
    }

    #[test]
    fn proc_counters_carry_the_netns_label_and_no_entries() {
        let mut published = Published::default();
        published.add(&snapshot(vec![namespace(1, None, totals(10, 5))], false));
        let text = render(&published, Format::Text).unwrap();
        for line in [
            "# TYPE synproxy_syn_received_total counter",
            "synproxy_syn_received_total{netns=\"self\"} 10",
            "synproxy_cookie_valid_total{netns=\"self\"} 5",
            "synproxy_cookie_invalid_total{netns=\"self\"} 0",
            "synproxy_cookie_retrans_total{netns=\"self\"} 0",
            "synproxy_conn_reopened_total{netns=\"self\"} 0",
            "synproxy_agent_build_info{version=\"0.1.0\"} 1",
            "synproxy_agent_ebpf_attached 0",
            "synproxy_agent_ebpf_enabled 0",
            "synproxy_agent_rounds_total 1",
            "synproxy_agent_last_round_duration_seconds 0.0015",
            "synproxy_agent_namespaces{state=\"read\"} 1",
        ] {
            assert!(has(&text, line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("entries"), "{text}");
        assert!(
            !text.contains("synproxy_ebpf"),
            "no eBPF series without eBPF:\n{text}"
        );
    }

    #[test]
    fn influx_writer_health_only_with_the_writer() {
        let mut published = Published::default();
        published.add(&snapshot(vec![namespace(1, None, totals(10, 5))], false));
        let text = render(&published, Format::Text).unwrap();
        assert!(!text.contains("influx"), "{text}");

        let mut round = (*snapshot(vec![namespace(1, None, totals(10, 5))], false)).clone();
        round.agent.influx = Some(InfluxHealth {
            written_lines: 40,
            buffered_lines: 3,
            dropped_lines: 2,
            rejected_lines: 1,
        });
        published.add(&Arc::new(round));
        let text = render(&published, Format::Text).unwrap();
        for line in [
            "# TYPE synproxy_agent_influx_written_lines_total counter",
            "synproxy_agent_influx_written_lines_total 40",
            "synproxy_agent_influx_dropped_lines_total 2",
            "synproxy_agent_influx_rejected_lines_total 1",
            "# TYPE synproxy_agent_influx_buffered_lines gauge",
            "synproxy_agent_influx_buffered_lines 3",
        ] {
            assert!(has(&text, line), "{line} missing in\n{text}");
        }
        promtool_check(&text);
    }

    #[test]
    fn ebpf_series_from_a_synthetic_snapshot() {
        let published = ebpf_published();
        let text = render(&published, Format::Text).unwrap();
        for line in [
            "synproxy_syn_received_total{netns=\"blue\"} 45",
            "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\"} 30",
            "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv6\",counter=\"syn_received\"} 15",
            "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv4\",counter=\"cookie_valid\"} 0",
            "synproxy_ebpf_peak_rate{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\"} 100.0",
            "synproxy_ebpf_peak_rate{netns=\"blue\",family=\"ipv6\",counter=\"syn_received\"} 50.0",
            "synproxy_ebpf_reconcile_status{netns=\"blue\",status=\"exact\"} 1",
            "synproxy_ebpf_reconcile_status{netns=\"blue\",status=\"proc-only\"} 0",
            "synproxy_ebpf_reconcile_status{netns=\"init\",status=\"proc-only\"} 1",
            "synproxy_ebpf_reconcile_rounds_total{netns=\"blue\",status=\"exact\"} 2",
            "synproxy_ebpf_reconcile_rounds_total{netns=\"init\",status=\"proc-only\"} 2",
            "synproxy_ebpf_probe_misses_total 4",
            "synproxy_ebpf_recursion_misses_total{program=\"ack4\"} 1",
            "synproxy_ebpf_kprobe_hits_total{probe=\"synack4\"} 20",
            "synproxy_ebpf_kprobe_missed_total{probe=\"ack4_ret\"} 1",
            "synproxy_ebpf_anomalies_total{kind=\"rate_late_events\"} 1",
            "synproxy_ebpf_map_memory_bytes 2797568",
            "synproxy_ebpf_source_map_entries 40",
            "synproxy_ebpf_source_map_capacity 65536",
            "synproxy_ebpf_source_evictions_total 3",
            "synproxy_ebpf_source_insert_failures_total 0",
            "synproxy_ebpf_source_map_memory_bytes 6291456",
            "synproxy_ebpf_program_run_time_seconds_total{program=\"ack4\"} 2.5",
            "synproxy_ebpf_program_runs_total{program=\"ack4\"} 7",
            "synproxy_agent_ebpf_attached 1",
        ] {
            assert!(has(&text, line), "{line} missing in\n{text}");
        }
        // Every family once, every series once.
        let mut series: Vec<&str> = samples(&text)
            .iter()
            .map(|l| l.rsplit_once(' ').map_or(*l, |(s, _)| s))
            .collect();
        let n = series.len();
        series.sort_unstable();
        series.dedup();
        assert_eq!(series.len(), n, "duplicate series in\n{text}");
        promtool_check(&text);
    }

    fn top(netns: Option<&str>, sources: &[(&str, u64)]) -> TopSources {
        let total: u64 = sources.iter().map(|(_, e)| e).sum();
        TopSources {
            netns: netns.map(str::to_string),
            family: "ipv4",
            counter: Counter::SynReceived,
            interval_events: total,
            entries: sources
                .iter()
                .map(|(source, events)| TopSource {
                    source: (*source).to_string(),
                    events: *events,
                    share: *events as f64 / total as f64,
                })
                .collect(),
        }
    }

    fn with_top(published: &mut Published, tops: Vec<TopSources>) {
        let mut ns = namespace(1, Some("blue"), totals(30, 4));
        ns.ebpf = Some(ebpf(Some("blue"), [20, 10], Status::Exact));
        let mut round = (*snapshot(vec![ns], true)).clone();
        round.top_sources = tops;
        published.add(&Arc::new(round));
    }

    #[test]
    fn top_sources_are_a_bounded_gauge_of_the_last_round() {
        let mut published = Published::default();
        let mut v6 = top(None, &[("2001:db8::/64", 5)]);
        v6.family = "ipv6";
        v6.counter = Counter::CookieInvalid;
        with_top(
            &mut published,
            vec![
                top(
                    Some("blue"),
                    &[("203.0.113.7", 30), ("198.51.100.0/24", 10)],
                ),
                v6,
            ],
        );
        let text = render(&published, Format::Text).unwrap();
        for line in [
            "# TYPE synproxy_top_source_events gauge",
            "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",rank=\"1\",source=\"203.0.113.7\"} 30",
            "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",rank=\"2\",source=\"198.51.100.0/24\"} 10",
            "synproxy_top_source_events{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",rank=\"1\",source=\"2001:db8::/64\"} 5",
            "# TYPE synproxy_top_source_share gauge",
            "synproxy_top_source_share{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",rank=\"1\",source=\"203.0.113.7\"} 0.75",
            "synproxy_top_source_share{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",rank=\"1\",source=\"2001:db8::/64\"} 1.0",
        ] {
            assert!(has(&text, line), "{line} missing in\n{text}");
        }
        promtool_check(&text);
        let text = render(&published, Format::OpenMetrics).unwrap();
        assert!(
            has(&text, "# TYPE synproxy_top_source_events gauge"),
            "{text}"
        );

        // The next round's top: 203.0.113.7 dropped out, its series is gone.
        with_top(
            &mut published,
            vec![top(
                Some("blue"),
                &[("192.0.2.9", 40), ("198.51.100.0/24", 12)],
            )],
        );
        let text = render(&published, Format::Text).unwrap();
        assert!(!text.contains("203.0.113.7"), "{text}");
        assert!(!text.contains("2001:db8::/64"), "{text}");
        assert!(has(
            &text,
            "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",rank=\"1\",source=\"192.0.2.9\"} 40"
        ));
        assert_eq!(
            samples(&text)
                .iter()
                .filter(|l| l.starts_with("synproxy_top_source_events"))
                .count(),
            2
        );
        promtool_check(&text);

        // Per-source counting off, or nobody sent anything: no family at all.
        with_top(&mut published, vec![top(Some("blue"), &[])]);
        let text = render(&published, Format::Text).unwrap();
        assert!(!text.contains("synproxy_top_source"), "{text}");
        promtool_check(&text);
    }

    /// A malformed snapshot (a list twice, a source twice) never makes
    /// duplicate series.
    #[test]
    fn top_sources_never_duplicate_a_series() {
        let mut published = Published::default();
        let list = top(Some("blue"), &[("192.0.2.1", 3), ("192.0.2.1", 2)]);
        with_top(&mut published, vec![list.clone(), list]);
        let text = render(&published, Format::Text).unwrap();
        assert_eq!(
            samples(&text)
                .iter()
                .filter(|l| l.starts_with("synproxy_top_source_events"))
                .count(),
            1,
            "{text}"
        );
        promtool_check(&text);
    }

    #[test]
    fn openmetrics_when_asked() {
        let published = ebpf_published();
        let text = render(&published, Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(has(&text, "# TYPE synproxy_syn_received counter"), "{text}");
        assert!(
            has(&text, "synproxy_syn_received_total{netns=\"blue\"} 45"),
            "{text}"
        );
        assert!(has(&text, "# TYPE synproxy_agent_build info"), "{text}");
        assert!(
            has(&text, "# UNIT synproxy_ebpf_map_memory_bytes bytes"),
            "{text}"
        );
    }

    #[test]
    fn accept_header_negotiation() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::for_accept([prometheus]), Format::OpenMetrics);
        assert_eq!(Format::for_accept([]), Format::Text);
        assert_eq!(Format::for_accept(["*/*"]), Format::Text);
        assert_eq!(
            Format::for_accept(["text/plain;version=0.0.4"]),
            Format::Text
        );
        assert_eq!(
            Format::for_accept(["text/plain;q=0.9, application/openmetrics-text;q=0.5"]),
            Format::Text
        );
        assert_eq!(
            Format::for_accept(["application/openmetrics-text; version=1.0.0"]),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::for_accept(["application/openmetrics-text;q=0"]),
            Format::Text
        );
    }

    /// Probes re-attached: a proc-only round with no events in between; the
    /// eBPF totals go on from where they were.
    #[test]
    fn ebpf_totals_survive_reattach_and_follow_the_series_not_the_label() {
        let mut published = Published::default();
        let mut ns = namespace(7, Some("blue"), totals(10, 0));
        ns.ebpf = Some(ebpf(Some("blue"), [10, 0], Status::Exact));
        published.add(&snapshot(vec![ns.clone()], true));
        ns.ebpf = Some(ebpf(Some("blue"), [0, 0], Status::ProcOnly));
        published.add(&snapshot(vec![ns.clone()], true));
        // The namespace lost its name: same series, new label.
        ns.sample.netns = Some("ns-4026532290".into());
        ns.ebpf = Some(ebpf(Some("ns-4026532290"), [5, 1], Status::Exact));
        published.add(&snapshot(vec![ns], true));
        assert_eq!(published.ebpf[&7].events[0][0], 15);
        assert_eq!(published.ebpf[&7].events[1][0], 1);
        assert_eq!(published.ebpf[&7].rounds, [2, 0, 0, 1]);
        let text = render(&published, Format::Text).unwrap();
        assert!(has(
            &text,
            "synproxy_ebpf_events_total{netns=\"ns-4026532290\",family=\"ipv4\",counter=\"syn_received\"} 15"
        ));
        assert!(!text.contains("netns=\"blue\""), "{text}");
    }

    /// A namespace not found stays with its counters while retained (not its
    /// per-round gauges), unless a present one has its label; once the
    /// sampler forgets it, it leaves, with its eBPF totals.
    #[test]
    fn retained_namespaces_keep_their_counters_until_forgotten() {
        let mut published = Published::default();
        let mut gone = namespace(3, Some("red"), totals(8, 1));
        gone.ebpf = Some(ebpf(Some("red"), [8, 0], Status::Exact));
        let mut reused = namespace(4, Some("blue"), totals(1, 0));
        reused.ebpf = Some(ebpf(Some("blue"), [1, 0], Status::Exact));
        published.add(&snapshot(vec![gone, reused.clone()], true));

        let mut next = (*snapshot(vec![reused.clone()], true)).clone();
        next.retained = vec![
            RetainedNamespace {
                series: 3,
                netns: Some("red".into()),
                totals: totals(8, 1),
                missing_rounds: 1,
            },
            // An older namespace once labelled blue: the present one wins.
            RetainedNamespace {
                series: 2,
                netns: Some("blue".into()),
                totals: totals(99, 99),
                missing_rounds: 5,
            },
        ];
        published.add(&Arc::new(next));
        let text = render(&published, Format::Text).unwrap();
        assert!(
            has(&text, "synproxy_syn_received_total{netns=\"red\"} 8"),
            "{text}"
        );
        assert!(
            has(&text, "synproxy_syn_received_total{netns=\"blue\"} 1"),
            "{text}"
        );
        assert!(!text.contains(" 99\n"), "{text}");
        assert!(has(
            &text,
            "synproxy_ebpf_events_total{netns=\"red\",family=\"ipv4\",counter=\"syn_received\"} 8"
        ));
        assert!(
            !text.contains("synproxy_ebpf_peak_rate{netns=\"red\""),
            "{text}"
        );
        assert!(
            !text.contains("synproxy_ebpf_reconcile_status{netns=\"red\""),
            "{text}"
        );
        assert!(has(
            &text,
            "synproxy_agent_namespaces{state=\"retained\"} 2"
        ));
        promtool_check(&text);

        // Forgotten by the sampler: gone from the exposition.
        published.add(&snapshot(vec![reused], true));
        let text = render(&published, Format::Text).unwrap();
        assert!(!text.contains("netns=\"red\""), "{text}");
        assert!(!published.ebpf.contains_key(&3));
    }

    #[test]
    fn label_values_are_the_line_protocol_tags_and_escaped() {
        let mut published = Published::default();
        published.add(&snapshot(
            vec![namespace(1, Some("a \"q\"\nb\\"), totals(1, 0))],
            false,
        ));
        let text = render(&published, Format::Text).unwrap();
        assert!(
            has(
                &text,
                r#"synproxy_syn_received_total{netns="a \"q\"_b_"} 1"#
            ),
            "{text}"
        );
        promtool_check(&text);
    }

    #[test]
    fn before_the_first_round_only_agent_series() {
        let text = render(&Published::default(), Format::Text).unwrap();
        assert_eq!(
            samples(&text),
            vec![
                "synproxy_agent_build_info{version=\"0.1.0\"} 1",
                "synproxy_agent_rounds_total 0"
            ]
        );
    }

    #[test]
    fn http_routes() {
        let published = Arc::new(ebpf_published());
        let get = |path: &str, accept: Option<&str>| {
            let mut request = Request::get(path);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            respond(&request.body(()).unwrap(), &published)
        };
        let metrics = get("/metrics", None);
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(
            metrics.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let om = get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        );
        assert_eq!(om.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        assert_eq!(get("/nope", None).status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/", None).status(), StatusCode::OK);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(
            respond(&post, &published).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// `promtool check metrics` finds nothing (skipped without promtool,
    /// unless CI=true).
    fn promtool_check(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("promtool (Debian package prometheus) is needed: {e} (CI=true)")
            }
            Err(e) => {
                eprintln!("SKIPPED promtool check: {e} (apt-get install prometheus)");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("promtool stdin");
        }
        let out = child.wait_with_output().expect("promtool");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics: {report}\n{text}"
        );
    }
}

//! An attack as the outputs see it: one [`AttackEvent`] when a flood starts,
//! one per round while it lasts and one when it ends, each with the figures
//! so far. The same document goes to line protocol, `/metrics`, the log and
//! the `--on-attack` hook (as JSON, [`AttackEvent::to_json`]).

use serde::{Deserialize, Serialize};

/// Which counter flooded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// `syn_received`: SYNs the proxy answered with a cookie.
    SynFlood,
    /// `cookie_invalid`: ACKs that carried no valid cookie.
    AckFlood,
}

impl AttackKind {
    pub const ALL: [AttackKind; 2] = [AttackKind::SynFlood, AttackKind::AckFlood];

    pub const fn name(self) -> &'static str {
        match self {
            AttackKind::SynFlood => "syn_flood",
            AttackKind::AckFlood => "ack_flood",
        }
    }

    /// The SYNPROXY counter it is measured on.
    pub const fn counter(self) -> synproxy_common::Counter {
        match self {
            AttackKind::SynFlood => synproxy_common::Counter::SynReceived,
            AttackKind::AckFlood => synproxy_common::Counter::CookieInvalid,
        }
    }
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackPhase {
    Start,
    Ongoing,
    End,
}

impl AttackPhase {
    pub const fn name(self) -> &'static str {
        match self {
            AttackPhase::Start => "start",
            AttackPhase::Ongoing => "ongoing",
            AttackPhase::End => "end",
        }
    }
}

/// One source's share of the event's events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventSource {
    /// An address, or a prefix when sources are summed (`--top-prefix-v4`).
    pub source: String,
    pub events: u64,
}

/// One destination port's share of the namespace's events of this kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventPort {
    pub port: u16,
    pub events: u64,
}

/// One attack: a namespace's (and, with per-port counting, a destination
/// port's) rate of one kind above its threshold, from start to end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackEvent {
    /// Unique per attack and the same in all its documents:
    /// `<netns>/<kind>/<port or all>/<start_ns>`.
    pub id: String,
    /// The namespace's label (`None`: the agent's own namespace).
    pub netns: Option<String>,
    pub kind: AttackKind,
    /// The destination port, where events are counted per port; `None`: the
    /// namespace's total.
    pub port: Option<u16>,
    pub phase: AttackPhase,
    /// When the rate first reached the threshold, nanoseconds since the epoch.
    pub start_ns: u64,
    /// When this document was made.
    pub timestamp_ns: u64,
    /// On `end`: when the rate fell below the release level for good.
    pub end_ns: Option<u64>,
    /// Events per second over the detector's last window.
    pub rate: f64,
    /// The learnt normal rate it is judged against, per second.
    pub baseline: f64,
    /// The rate that started it (max of the floor and factor x baseline).
    pub threshold: f64,
    /// Highest rate over one window since the start.
    pub peak_rate: f64,
    /// Events of this kind since the start.
    pub events: u64,
    /// The namespace's top sources of this kind since the last round (with
    /// eBPF and `--top`), best first.
    pub top_sources: Vec<EventSource>,
    /// The namespace's top destination ports of this kind (with per-port
    /// counting), best first.
    pub top_ports: Vec<EventPort>,
    /// The namespace's defense state when the document was made (with the
    /// verdict on).
    pub defense: Option<&'static str>,
}

impl AttackEvent {
    /// The event id for a subject and start.
    pub fn make_id(
        netns: Option<&str>,
        kind: AttackKind,
        port: Option<u16>,
        start_ns: u64,
    ) -> String {
        let port = port.map_or_else(|| "all".to_string(), |p| p.to_string());
        format!("{}/{}/{port}/{start_ns}", netns.unwrap_or(""), kind.name())
    }

    /// Seconds since the start.
    pub fn duration_secs(&self) -> f64 {
        let until = self.end_ns.unwrap_or(self.timestamp_ns);
        until.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// The document as one line of JSON (what the hook reads on stdin).
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail; a NaN rate
        // would be written as null.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The `port` tag's value: the port, or `all`.
    pub fn port_tag(&self) -> String {
        self.port
            .map_or_else(|| "all".to_string(), |p| p.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An attack on port 443 of `edge` (for other modules' tests).
    pub fn sample_event(phase: AttackPhase) -> AttackEvent {
        AttackEvent {
            id: AttackEvent::make_id(Some("edge"), AttackKind::SynFlood, Some(443), 1_000_000_000),
            netns: Some("edge".into()),
            kind: AttackKind::SynFlood,
            port: Some(443),
            phase,
            start_ns: 1_000_000_000,
            timestamp_ns: 3_500_000_000,
            end_ns: (phase == AttackPhase::End).then_some(3_500_000_000),
            rate: 5000.0,
            baseline: 20.0,
            threshold: 100.0,
            peak_rate: 6000.0,
            events: 12_000,
            top_sources: vec![EventSource {
                source: "203.0.113.7".into(),
                events: 9000,
            }],
            top_ports: vec![EventPort {
                port: 443,
                events: 12_000,
            }],
            defense: Some("syn_flood_absorbed"),
        }
    }

    #[test]
    fn the_json_document_names_every_field() {
        let json = sample_event(AttackPhase::End).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["id"], "edge/syn_flood/443/1000000000");
        assert_eq!(v["kind"], "syn_flood");
        assert_eq!(v["phase"], "end");
        assert_eq!(v["port"], 443);
        assert_eq!(v["end_ns"], 3_500_000_000u64);
        assert_eq!(v["top_sources"][0]["source"], "203.0.113.7");
        assert_eq!(v["top_ports"][0]["events"], 12_000);
        assert_eq!(v["defense"], "syn_flood_absorbed");
        assert!(!json.contains('\n'));
    }

    #[test]
    fn ids_name_the_subject_and_start() {
        assert_eq!(
            AttackEvent::make_id(None, AttackKind::AckFlood, None, 7),
            "/ack_flood/all/7"
        );
        assert_eq!(sample_event(AttackPhase::Start).duration_secs(), 2.5);
    }
}

//! Real-kernel SYNPROXY scenarios: network namespaces over veth, SYNPROXY rules
//! (xt and nft), a traffic driver (real sockets and crafted raw packets) that moves
//! each counter by a known amount, and checks of the agent against /proc.
//!
//! The `synproxy-scenario` binary (src/bin) is the entry point used both by the host
//! integration tests and unchanged inside the QEMU guests of the VM suite.

pub mod agent;
pub mod attack_detection;
pub mod attack_detection_judge;
pub mod attack_judge;
pub mod attack_watch;
pub mod bpf_floor;
pub mod bpf_objects;
pub mod burst_judge;
pub mod caps;
pub mod check;
#[cfg(test)]
pub mod check_cases;
pub mod check_names;
pub mod child;
pub mod clean_state;
pub mod clean_state_check;
pub mod connections;
pub mod container;
pub mod dashboard;
pub mod defense_traffic;
pub mod defense_verdict;
pub mod ebpf_checks;
pub mod ebpf_cost;
pub mod ebpf_cost_judge;
pub mod fentry_module;
pub mod flood_judge;
pub mod fuzz;
pub mod grafana_schema;
pub mod guest_activity;
pub mod guest_modules;
pub mod harness;
pub mod http_client;
pub mod influxd_setup;
pub mod influxdb;
pub mod ksoftirqd;
pub mod lifecycle;
pub mod lifecycle_judge;
pub mod line_protocol;
pub mod live_agent;
pub mod matrix_judge;
pub mod metrics_agent;
pub mod module_agent;
pub mod module_late;
pub mod netns;
pub mod non_root;
pub mod non_root_judge;
pub mod packet;
pub mod pidns;
pub mod proc_counters;
pub mod proc_signals;
pub mod prometheus;
pub mod protected_server;
pub mod rng;
pub mod round_agent;
pub mod rules;
pub mod scenario;
pub mod scenario_cli;
pub mod stack_compare;
pub mod sustained;
pub mod sustained_judge;
pub mod synproxy_xt;
pub mod tcp_counters;
pub mod tmux;
pub mod tools;
pub mod top_ports;
pub mod top_ports_judge;
pub mod top_series_prometheus;
pub mod top_series_scrape;
pub mod top_sources;
pub mod top_sources_flood;
pub mod top_sources_ground_truth;
pub mod top_sources_judge;
pub mod top_view;
pub mod top_view_judge;
pub mod traffic;
pub mod user_netns;
pub mod user_netns_check;
pub mod user_netns_judge;

//! Per-interval hot path: parse /proc/net/stat/synproxy, update the wrap
//! tracker, encode one line. Targets on the project machine: 2 rows <= 2 us,
//! 4096 rows <= 300 us. `cargo xtask bench` also prints the agent's RSS.
//! Also the top sources of one interval from 65,536 sources (the per-source
//! map's default size), per address and summed into /24 prefixes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use synproxy_user::ranking::{SourceCount, TopConfig, TopRanker};
use synproxy_user::reconcile::wrap_tracker::{CounterIdentity, WrapTracker};
use synproxy_user::sample::Sample;
use synproxy_user::sinks::line_protocol::{IntegerType, LineEncoder};
use synproxy_user::sources::proc::proc_stat;

/// A file as the kernel prints it for `cpus` possible CPUs.
fn kernel_file(cpus: usize) -> Vec<u8> {
    let mut text = String::from(
        "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n",
    );
    for cpu in 0..cpus as u32 {
        let v = cpu.wrapping_mul(2_654_435_761);
        text.push_str(&format!(
            "00000000\t{:08x}\t{:08x}\t{:08x}\t{:08x}\t{:08x}\n",
            v,
            v >> 3,
            v >> 1,
            v >> 20,
            v >> 24
        ));
    }
    text.into_bytes()
}

fn parse_track_encode(c: &mut Criterion) {
    let encoder = LineEncoder::new(
        &[("host".to_string(), "gw01.example.net".to_string())],
        IntegerType::Signed,
    );
    let identity = CounterIdentity {
        file_dev: 21,
        file_inode: 4_026_532_085,
    };
    let mut group = c.benchmark_group("parse+track+encode");
    for cpus in [2usize, 64, 4096] {
        let file = kernel_file(cpus);
        let mut tracker = WrapTracker::new();
        let mut out = Vec::with_capacity(256);
        group.throughput(Throughput::Bytes(file.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(cpus), &file, |b, file| {
            b.iter(|| {
                let stat = match proc_stat::parse(black_box(file)) {
                    Ok(stat) => stat,
                    Err(e) => panic!("benchmark input does not parse: {e}"),
                };
                let (totals, _) = tracker.update(identity, &stat);
                out.clear();
                encoder.encode(
                    &Sample {
                        netns: None,
                        totals,
                        timestamp_ns: 1_795_873_250_758_673_503,
                    },
                    &mut out,
                );
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// 65,536 distinct sources with skewed counts: one round of a botnet flood.
fn flood_sources() -> Vec<SourceCount<'static>> {
    (0..65_536u32)
        .map(|i| SourceCount {
            netns: Some("edge"),
            counter: synproxy_common::Counter::SynReceived,
            source: std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8,
            )),
            events: u64::from(i % 1000) + 1,
        })
        .collect()
}

fn top_sources(c: &mut Criterion) {
    let sources = flood_sources();
    let mut group = c.benchmark_group("top-sources");
    group.throughput(Throughput::Elements(sources.len() as u64));
    for (name, prefix_v4) in [("65536/addresses", 32u8), ("65536/prefix24", 24)] {
        let mut ranker = TopRanker::new(TopConfig {
            n: 10,
            prefix_v4,
            prefix_v6: 128,
            ..TopConfig::default()
        });
        group.bench_function(name, |b| {
            b.iter(|| black_box(ranker.rank(black_box(&sources).iter().copied(), [])))
        });
    }
    group.finish();
}

criterion_group!(benches, parse_track_encode, top_sources);
criterion_main!(benches);

//! Drives every SYNPROXY counter with real traffic in fresh network namespaces and
//! checks the agent against /proc. Prints one `RESULT ...` line per combination,
//! then `SUMMARY passed=N failed=M`; exits 1 if anything failed.

use clap::Parser;
use synproxy_tests::scenario;
use synproxy_tests::scenario_cli::{self, Cli, Mode};
use synproxy_tests::tools;
use synproxy_tests::{
    attack_detection, caps, check, clean_state, clean_state_check, ebpf_checks, ebpf_cost,
    fentry_module, lifecycle, module_late, non_root, pidns, sustained, top_ports, top_sources,
    top_view, user_netns_check,
};

fn main() {
    // Helper mode first, while the process is single-threaded (unshare + fork).
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == caps::HELPER_FLAG) {
        // Returns only if it could not exec the program.
        if let Err(e) = caps::helper_main(&raw[1..]) {
            eprintln!("synproxy-scenario {}: {e:#}", caps::HELPER_FLAG);
        }
        std::process::exit(125);
    }
    if raw.first().is_some_and(|a| a == pidns::HELPER_FLAG) {
        match pidns::helper_main(&raw[1..]) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("synproxy-scenario {}: {e:#}", pidns::HELPER_FLAG);
                std::process::exit(125);
            }
        }
    }
    if raw.first().is_some_and(|a| a == clean_state::HELPER_FLAG) {
        let rest: Vec<String> = raw[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match clean_state::helper_main(&tools::kernel_release(), &rest) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("synproxy-scenario {}: {e:#}", clean_state::HELPER_FLAG);
                std::process::exit(2);
            }
        }
    }
    // `--help` and clap's own errors exit here (0 and 2).
    let cli = Cli::parse();
    if cli.list {
        print!("{}", scenario_cli::list());
        return;
    }
    let args = match cli.scenario() {
        Ok(s) if !s.cfg.agent.is_file() => {
            eprintln!(
                "synproxy-scenario: agent binary {} not found",
                s.cfg.agent.display()
            );
            std::process::exit(2);
        }
        Ok(s) => s,
        Err(e) => {
            eprintln!("synproxy-scenario: {e:#}");
            std::process::exit(2);
        }
    };
    let kernel = tools::kernel_release();
    let (mut passed, mut failed) = (0u32, 0u32);
    // The check modes print each check as soon as it is done: a guest that runs
    // out of time keeps the lines of the checks that finished.
    let cfg = &args.cfg;
    let kernel = kernel.as_str();
    // module-late's agent and namespace, for module-reload.
    let handover = module_late::Handover::default();
    type Run<'a> = Box<dyn Fn() -> Vec<check::Check> + 'a>;
    let mut checks: Vec<(&str, Run)> = Vec::new();
    let sustained_params;
    let cost_params;
    match &args.mode {
        Mode::Matrix => {}
        &Mode::Flood { syns, acks } => {
            checks.push((
                "flood",
                Box::new(move || vec![ebpf_checks::flood(cfg, kernel, syns, acks)]),
            ));
            checks.push(("shutdown", Box::new(|| ebpf_checks::shutdown(cfg, kernel))));
        }
        &Mode::Sustained { syns, acks, secs } => {
            sustained_params = sustained::Params {
                syns,
                acks,
                secs,
                ..sustained::Params::default()
            };
            let params = &sustained_params;
            checks.push((
                "sustained",
                Box::new(move || vec![sustained::sustained(cfg, kernel, params)]),
            ));
        }
        Mode::Lifecycle { delays } => {
            checks.push((
                "sigterm-during-startup",
                Box::new(move || {
                    vec![lifecycle::sigterm_during_startup(
                        cfg,
                        kernel,
                        delays.as_deref(),
                    )]
                }),
            ));
            checks.push((
                "kill9-restart",
                Box::new(|| vec![lifecycle::kill9_restart(cfg, kernel)]),
            ));
            checks.push((
                "two-agents",
                Box::new(|| vec![lifecycle::two_agents(cfg, kernel)]),
            ));
        }
        Mode::NonRoot => {
            checks.push((
                "non-root",
                Box::new(|| vec![non_root::non_root(cfg, kernel)]),
            ));
        }
        Mode::TopSources => {
            let (rules, families) = (&args.rules, &args.families);
            checks.push((
                "top-sources",
                Box::new(move || top_sources::ground_truth(cfg, kernel, rules, families)),
            ));
            checks.push((
                "top-sources-flood",
                Box::new(|| vec![top_sources::flood(cfg, kernel)]),
            ));
        }
        Mode::TopPorts => {
            checks.push(("top-ports", Box::new(|| top_ports::top_ports(cfg, kernel))));
        }
        Mode::AttackDetection => {
            checks.push((
                "attack-detection",
                Box::new(|| vec![attack_detection::attack_detection(cfg, kernel)]),
            ));
        }
        &Mode::EbpfCost {
            syns,
            throughput_syns,
            runs,
            enforce_throughput,
        } => {
            cost_params = ebpf_cost::Params {
                syns,
                throughput_syns,
                runs,
                enforce_throughput,
            };
            let params = &cost_params;
            checks.push((
                "ebpf-cost",
                Box::new(move || vec![ebpf_cost::ebpf_cost(cfg, kernel, params)]),
            ));
        }
        Mode::ModuleLate => {
            let handover = &handover;
            checks.push((
                "module-late",
                Box::new(move || vec![module_late::module_late(cfg, kernel, handover)]),
            ));
            checks.push((
                module_late::RELOAD,
                Box::new(move || module_late::module_reload(cfg, kernel, handover)),
            ));
        }
        Mode::CleanState => {
            checks.push((
                "clean-state",
                Box::new(|| vec![clean_state_check::clean_state(cfg, kernel)]),
            ));
        }
        Mode::FentryModule => {
            checks.push((
                "fentry-module",
                Box::new(|| vec![fentry_module::fentry_module(cfg, kernel)]),
            ));
        }
        Mode::TopView => {
            checks.push((
                "top-view",
                Box::new(|| vec![top_view::top_view(cfg, kernel)]),
            ));
        }
        &Mode::UserNetns { namespaces } => {
            checks.push((
                "user-netns",
                Box::new(move || vec![user_netns_check::user_netns(cfg, kernel, namespaces)]),
            ));
        }
    }
    if !checks.is_empty() {
        for (name, run) in checks {
            // In the VM suite: only from the kernel state before the first check
            // (module-reload goes on from module-late's agent and namespace).
            if name != module_late::RELOAD && !clean_state::gate(kernel, name) {
                failed += 1;
                continue;
            }
            for check in run() {
                for line in check.report() {
                    println!("{line}");
                }
                if check.pass {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        println!("SUMMARY passed={passed} failed={failed}");
        std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
    }
    let combos = scenario::combos(&args.rules, &args.families, &args.counters);
    if combos.is_empty() {
        // Never succeed on zero checks.
        println!(
            "# error: no combination selected (cookie_retrans and conn_reopened are IPv4-only)"
        );
    }
    for combo in combos {
        let name = format!(
            "matrix-{}-{}-{}",
            combo.rules.name(),
            combo.family.name(),
            combo.counter.name()
        );
        if !clean_state::gate(kernel, &name) {
            failed += 1;
            continue;
        }
        let outcome = scenario::run_combo(&args.cfg, combo);
        println!("{}", outcome.result_line(kernel));
        for note in &outcome.notes {
            println!("# {note}");
        }
        if outcome.pass {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("SUMMARY passed={passed} failed={failed}");
    std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
}

#!/bin/sh
# PID 1 of the vm-test guest (busybox sh). Prints machine-readable lines on the serial
# console: "RESULT ..." per check, "CHECK-BEGIN name=..." / "CHECK-END name=... secs=..."
# around every check (the host names the open check if the boot runs out of time),
# and the "VMTEST-BOOTED" / "VMTEST-END" markers.
# busybox runs its own `ip` applet before PATH, so iproute2 is always called by full path.
#
# It mounts, loads the modules and hands every check to the Rust driver,
# synproxy-scenario (tests/src/). Adding a check: a subcommand there, its name in
# tests/src/check_names.rs, and here
#     if selected my-check && begin_check my-check; then
#         run_scenario my-check 900 --agent "$AGENT" ... my-check $TOOLS
#         end_check my-check
#     fi
# begin_check waits until the kernel is back at its state before the first check and
# is false (the check failed, naming the leftovers) if it does not get there; a check
# must leave nothing behind (namespaces, rules, processes, kprobe events, BPF objects).
export PATH=/bin:/usr/sbin:/usr/bin
IPROUTE2=/usr/sbin/ip
IPTABLES=/usr/sbin/iptables-legacy
IP6TABLES=/usr/sbin/ip6tables-legacy
NFT=/usr/sbin/nft
AGENT=/bin/synproxy-agent
SCENARIO=/bin/synproxy-scenario
TOOLS="--ip $IPROUTE2 --iptables $IPTABLES --ip6tables $IP6TABLES --nft $NFT"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Pseudo-terminals (tmux's panes in the top-view check): /dev/ptmx opens a pty of the
# devpts instance mounted at /dev/pts next to it.
mkdir -p /dev/pts
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
echo "3 4 1 3" > /proc/sys/kernel/printk
ip link set lo up 2>/dev/null

KERNEL=$(uname -r)
echo "VMTEST-BOOTED kernel=$KERNEL uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo)"

# --- timing ----------------------------------------------------------------------------

# An uptime with two decimals ("12.05") as centiseconds.
uptime_cs() {
    # "1" prefix then minus 100: a fraction like "05" must not be read as octal.
    echo $(( ${1%.*} * 100 + 1${1#*.} - 100 ))
}

# Centiseconds since boot (/proc/uptime always has two decimals).
now_cs() {
    local up
    read -r up _ < /proc/uptime
    uptime_cs "$up"
}

# Centiseconds as seconds with one decimal.
cs_to_secs() {
    echo "$(($1 / 100)).$(($1 % 100 / 10))"
}

CHECKS_RUN=0
# mark_check_begin NAME: marks the start of a check on the console.
mark_check_begin() {
    CHECK_STARTED_CS=$(now_cs)
    CHECKS_RUN=$((CHECKS_RUN + 1))
    echo "CHECK-BEGIN name=$1 kernel=$KERNEL uptime=$(cs_to_secs "$CHECK_STARTED_CS")"
}

# Every check starts from the kernel state recorded before the first one (named and
# process-held network namespaces, module reference counts, kprobe events, BPF
# objects, no stray process): `synproxy-scenario --clean-state check` polls until the
# kernel is back there (namespaces are torn down by a kernel worker, in the
# background) and fails the check with a RESULT line naming each leftover if it is
# not within CLEAN_STATE_S. The baseline is written once the early modules are
# loaded, and every later module load adds the new modules' reference counts.
# synproxy-scenario waits the same way before each of its own checks (SPX_CLEAN_STATE).
BASELINE=/run/vmtest-baseline
CLEAN_STATE_S=30

# begin_check NAME: marks the start of check NAME, then waits for the clean state;
# false (the check ended, with a FAIL line) if the kernel does not get back to it.
begin_check() {
    mark_check_begin "$1"
    [ -e "$BASELINE" ] || return 0
    "$SCENARIO" --clean-state check "$BASELINE" "$1" "$CLEAN_STATE_S" 2>&1 && return 0
    end_check "$1"
    return 1
}

# end_check NAME: marks its end with its duration in seconds.
end_check() {
    echo "CHECK-END name=$1 secs=$(cs_to_secs $(( $(now_cs) - CHECK_STARTED_CS )))"
}

# run_scenario NAME TIMEOUT_S ARGS...: synproxy-scenario ARGS, its output on the console
# (through `sed "$SCENARIO_SED"` when that is set). A scenario that times out, fails
# without a failing RESULT line, or prints no RESULT line at all adds a FAIL line for
# NAME, so nothing is lost silently.
run_scenario() {
    local name=$1 limit=$2 status results failures
    shift 2
    { timeout "$limit" "$SCENARIO" "$@" 2>&1; echo "$?" > /tmp/scenario.status; } \
        | sed "${SCENARIO_SED:-s/^//}" | tee /tmp/scenario.out
    status=$(cat /tmp/scenario.status)
    results=$(grep -c '^RESULT ' /tmp/scenario.out)
    failures=$(grep '^RESULT ' /tmp/scenario.out | grep -vc 'status=PASS')
    echo "# $name: scenario exit status $status"
    if [ "$status" = 143 ] || [ "$status" = 124 ]; then
        echo "# timeout waiting for the $name scenario (${limit}s)"
        echo "RESULT kernel=$KERNEL check=$name status=FAIL reason=timeout limit=${limit}s results_before=$results"
    elif [ "$status" != 0 ] && [ "$failures" = 0 ]; then
        echo "RESULT kernel=$KERNEL check=$name status=FAIL reason=exit-$status results_before=$results"
    elif [ "$results" = 0 ]; then
        echo "RESULT kernel=$KERNEL check=$name status=FAIL reason=no-results"
    fi
}

# selected NAME: whether check NAME runs. `cargo xtask vm-test --check NAME` (repeatable)
# passes vmtest_checks=a,b on the kernel command line, which the kernel hands to init
# as an environment variable; without it every check runs. vmtest_skip=c,d leaves checks
# to another boot (the eBPF cost check runs in a boot of its own, see qemu.rs ICOUNT).
selected() {
    case ",$vmtest_skip," in
        *",$1,"*) return 1 ;;
    esac
    [ -z "$vmtest_checks" ] && return 0
    case ",$vmtest_checks," in
        *",$1,"*) return 0 ;;
    esac
    return 1
}

# --- module loading ---------------------------------------------------------------

load_modules() { # $1: list file
    while read -r module; do
        [ -n "$module" ] || continue
        if ! insmod "$module" 2>/tmp/insmod.err; then
            echo "RESULT kernel=$KERNEL check=module-load module=$(basename "$module" .ko) status=FAIL"
            sed 's/^/insmod: /' /tmp/insmod.err
        fi
    done < "$1"
    # The first call writes the clean-state baseline, later ones add new modules.
    "$SCENARIO" --clean-state record "$BASELINE" 2>&1
    export SPX_CLEAN_STATE="$BASELINE"
}

# The module checks unload and load the late modules themselves and end with them
# loaded; should one stop half-way, the checks after it still get them.
ensure_late_modules() {
    [ -e /sys/module/nf_synproxy_core ] && return 0
    echo "# nf_synproxy_core is not loaded after $1: loading the late modules again"
    load_modules /etc/vmtest/modules-late
}

# --- the checks ---------------------------------------------------------------------

# 1. Everything except nf_synproxy_core and its dependants.
begin_check modules-early
load_modules /etc/vmtest/modules-early
end_check modules-early

# 2. module-late: the agent starts while /proc/net/stat/synproxy does not exist yet;
#    the scenario loads the late modules under it. 2b. module-reload: the same agent
#    while the scenario unloads and loads them again. Without module-late the late
#    modules are loaded here (the other checks need them).
if ! selected module-late || ! begin_check module-late; then
    load_modules /etc/vmtest/modules-late
else
    run_scenario module-late 900 --agent "$AGENT" --ebpf require module-late $TOOLS
    # One agent spans both checks: the scenario ended module-late and began
    # module-reload on the console; module-reload's time counts from that line.
    reload_began=$(sed -n 's/^CHECK-BEGIN name=module-reload .* uptime=\([0-9.]*\).*/\1/p' /tmp/scenario.out)
    if [ -n "$reload_began" ]; then
        CHECK_STARTED_CS=$(uptime_cs "$reload_began")
        CHECKS_RUN=$((CHECKS_RUN + 1))
        end_check module-reload
    else
        end_check module-late
    fi
    ensure_late_modules module-late
fi

# 2c. clean-state: the precondition itself. A namespace with an xt SYNPROXY rule, its
#     /run/netns name removed and held only by a process, must fail the precondition
#     naming that namespace with its holder and ipt_SYNPROXY's extra reference; once
#     the holder is gone the kernel tears the namespace down and the precondition holds.
if selected clean-state && begin_check clean-state; then
    run_scenario clean-state 900 --agent "$AGENT" clean-state $TOOLS
    end_check clean-state
fi

# 3. The full matrix: (xt|nft) x (ipv4|ipv6) x every counter, each in fresh netns, one
#    check per rules/family. Every combination also runs the agent with eBPF across the
#    traffic: ebpf= must equal proc=.
for rules in xt nft; do
    for family in ipv4 ipv6; do
        selected "matrix-$rules-$family" || continue
        begin_check "matrix-$rules-$family" || continue
        run_scenario "matrix-$rules-$family" 900 matrix --agent "$AGENT" --ebpf require \
            --rules "$rules" --family "$family" $TOOLS
        end_check "matrix-$rules-$family"
    done
done

# 4. The xt rules once more through iptables-nft: nft_compat runs the same xt targets
#    from an nf_tables chain. Its lines are tagged iptables=nft.
SCENARIO_SED='/^RESULT /s/ rules=xt / rules=xt iptables=nft /; s/^SUMMARY /SUMMARY iptables=nft /'
for family in ipv4 ipv6; do
    selected "iptables-nft-$family" || continue
    begin_check "iptables-nft-$family" || continue
    run_scenario "iptables-nft-$family" 900 matrix --agent "$AGENT" --ebpf require --rules xt \
        --family "$family" --ip $IPROUTE2 --iptables /usr/sbin/iptables-nft \
        --ip6tables /usr/sbin/ip6tables-nft --nft $NFT
    end_check "iptables-nft-$family"
done
SCENARIO_SED=

# 5. eBPF under a flood (20,000 SYNs + 5,000 bad ACKs: eBPF == /proc, no probe misses),
#    and shutdown: SIGTERM, SIGINT, stdin EOF each stop the agent within 1 s and leave
#    no kprobe event, BPF program or map behind.
if selected flood-shutdown && begin_check flood-shutdown; then
    run_scenario flood-shutdown 900 --agent "$AGENT" --ebpf require flood $TOOLS
    end_check flood-shutdown
fi

# 5b. Top sources: 60 sources with distinct known counts per rules flavour
#     and family (xt/nft x IPv4/IPv6): the agent's synproxy_top_sources lines, summed
#     over its rounds, must equal them exactly for syn_received, cookie_invalid and
#     cookie_valid, and the eBPF totals, with no eviction; then 100,000 spoofed SYNs
#     with 5 heavy sources into a 16,384-entry map: the heavy ones are ranks 1-5 with
#     exactly their counts, and the map reports evictions.
if selected top-sources && begin_check top-sources; then
    run_scenario top-sources 900 --agent "$AGENT" --ebpf require top-sources $TOOLS
    end_check top-sources
fi

# 5c. Top ports: crafted SYNs and bad ACKs with known counts to three protected
#     ports; the agent's synproxy_top_ports lines, summed over its rounds, must
#     equal them and the eBPF totals (== /proc), the map holds the 6 keys with no
#     eviction; then SYNs to 320 ports into a 256-entry map must report evictions.
if selected top-ports && begin_check top-ports; then
    run_scenario top-ports 300 --agent "$AGENT" --ebpf require top-ports $TOOLS
    end_check top-ports
fi

# 5d. Attack detection: benign SYNs swinging 15/s <-> 150/s raise no event after
#     the warm-up; a spoofed flood to port 8080 starts port and namespace events
#     within 1 s naming its sources, ends them within 3.5 s, and the hook gets
#     both documents; floods on 8080 and 8081 are two events; an agent restarted
#     during a flood goes on with the same event (state file).
if selected attack-detection && begin_check attack-detection; then
    run_scenario attack-detection 300 --agent "$AGENT" --ebpf require attack-detection $TOOLS
    end_check attack-detection
fi

# 6. Sustained flood: one server netns, xt and nft ports, IPv4 and IPv6,
#    among 20+ other namespaces; an agent with eBPF samples every 200 ms
#    (--netns all) while 100,000 SYNs + 30,000 bad ACKs run for at least 5 s. Every
#    busy round must be reconcile="exact", 0 probe misses, eBPF sum == /proc delta.
if selected sustained && begin_check sustained; then
    run_scenario sustained 900 --agent "$AGENT" --ebpf require sustained $TOOLS
    end_check sustained
fi

# 7. Lifecycle: SIGTERM at delays covering start-up and attach (exit 0,
#    nothing left), kill -9 then restart as PID 1 of a PID namespace, and two
#    agents at once, each PID 1 of its own PID namespace (both exact).
if selected lifecycle && begin_check lifecycle; then
    run_scenario lifecycle 900 --agent "$AGENT" --ebpf require lifecycle $TOOLS
    end_check lifecycle
fi

# 8. Least privilege: the agent with eBPF and --netns as uid 65534 with
#    only the capability table's CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE,
#    CAP_SYS_ADMIN (ambient): attaches, keeps exactly those (every thread,
#    bounding set, no_new_privs), eBPF == /proc after a burst, totals == a root
#    agent's, and SIGTERM leaves nothing behind.
if selected non-root && begin_check non-root; then
    run_scenario non-root 900 --agent "$AGENT" --ebpf require non-root $TOOLS
    end_check non-root
fi

# 9. fentry/fexit: the flood (with shutdown) and sustained checks again with
#    --probes fentry. Their RESULT lines add probes=fentry, the probe type the agent used
#    (probe_type=) and the one this kernel must give (expected_probe_type=: fentry where
#    nf_synproxy_core has module BTF; kprobe on 5.10, the documented fallback, whose
#    warning the flood check requires).
# Where nf_synproxy_core has no module BTF (5.10) fentry falls back to kprobes: the
# fentry-flood check proves that fallback (the warning, then exact kprobe counts); the
# other fentry-* checks would only repeat their kprobe checks, so they are left out there.
fentry_repeat() { # $1: check name; true if it runs
    selected "$1" || return 1
    if [ -e /sys/module/nf_synproxy_core ] && [ ! -e /sys/kernel/btf/nf_synproxy_core ]; then
        echo "# $1: not run: nf_synproxy_core has no module BTF here, so --probes fentry is kprobes (checked by fentry-flood)"
        return 1
    fi
    return 0
}
if selected fentry-flood && begin_check fentry-flood; then
    run_scenario fentry-flood 900 --agent "$AGENT" --ebpf require --probes fentry flood $TOOLS
    end_check fentry-flood
fi
if fentry_repeat fentry-sustained && begin_check fentry-sustained; then
    run_scenario fentry-sustained 900 --agent "$AGENT" --ebpf require --probes fentry sustained $TOOLS
    end_check fentry-sustained
fi

# The xt IPv4 matrix (every counter, conn_reopened and cookie_retrans included) with the
# agents on --probes fentry; its lines are tagged probes=fentry.
if fentry_repeat fentry-matrix-xt-ipv4 && begin_check fentry-matrix-xt-ipv4; then
    SCENARIO_SED='/^RESULT /s/ rules=xt / rules=xt probes=fentry /; s/^SUMMARY /SUMMARY probes=fentry /'
    run_scenario fentry-matrix-xt-ipv4 900 matrix --agent "$AGENT" --ebpf require --probes fentry \
        --rules xt --family ipv4 $TOOLS
    SCENARIO_SED=
    end_check fentry-matrix-xt-ipv4
fi

# The non-root check with --probes fentry: the capability table's fentry row (CAP_BPF,
# CAP_PERFMON, CAP_SYS_ADMIN: no tracefs, the module BTF lookup) where fentry is used.
if fentry_repeat fentry-non-root && begin_check fentry-non-root; then
    run_scenario fentry-non-root 900 --agent "$AGENT" --ebpf require --probes fentry non-root $TOOLS
    end_check fentry-non-root
fi

# The lifecycle checks (SIGTERM at delays through start-up and the attach, kill -9 then
# restart, two agents in two PID namespaces) with --probes fentry: programs loaded at the
# attach, so a signal can land between loading and attaching them; lines tagged
# probes=fentry.
if fentry_repeat fentry-lifecycle && begin_check fentry-lifecycle; then
    SCENARIO_SED='/^RESULT /s/ check=\([a-z0-9-]*\) / check=\1 probes=fentry /; s/^SUMMARY /SUMMARY probes=fentry /'
    run_scenario fentry-lifecycle 900 --agent "$AGENT" --ebpf require --probes fentry lifecycle $TOOLS
    SCENARIO_SED=
    end_check fentry-lifecycle
fi

# 10. fentry and module reloads. A loaded fentry program on a module function
#     holds the module (Linux 6.4+; 5.12-6.3 while attached). With the agent running with
#     --probes fentry: unloading nf_synproxy_core must fail "in use" while the agent keeps
#     counting; SIGUSR1 releases it; the module is unloaded and loaded again, and the
#     agent must load its programs again against the new module BTF (another BTF object
#     id in its attach log) and count the new events exactly. On a kernel without module
#     BTF (5.10) the agent must warn once and use kprobes, which do not hold the module.
if selected fentry-module && begin_check fentry-module; then
    run_scenario fentry-module 900 --agent "$AGENT" --ebpf require fentry-module $TOOLS
    end_check fentry-module
    ensure_late_modules fentry-module
fi

# 11. The live view: `synproxy-agent top --netns SRV --interval 1s` with eBPF
#     in a 120x40 tmux pane while crafted SYNs from 5 sources (50, 40, 30, 20, 10 each)
#     arrive in one burst: the top sources table must show those 5 in that order with
#     exactly those counts; q must end it with exit 0 and the terminal as it was.
if selected top-view && begin_check top-view; then
    run_scenario top-view 900 --agent "$AGENT" --ebpf require top-view $TOOLS
    end_check top-view
fi

# 12. An unprivileged user's namespaces: 1,000 made by uid 65534 (a user namespace,
#     then one sleeping process per network namespace) before a named server namespace
#     with SYNPROXY rules; the agent (--netns all --netns-include-user-owned
#     --netns-max 256) counts the named one exactly with eBPF, reports at most 256
#     namespaces and warns once about the rest.
if selected user-netns && begin_check user-netns; then
    # 3,000 namespaces on the kernel of Debian stable, 1,000 on the others (time).
    case "$KERNEL" in 6.12.*) un_count=3000 ;; *) un_count=1000 ;; esac
    run_scenario user-netns 900 --agent "$AGENT" --ebpf require user-netns \
        --namespaces "$un_count" $TOOLS
    end_check user-netns
fi

# 9. eBPF cost: per-program run time beside an empty kprobe program on
#    the same function (BPF stats), SYNs/s through SYNPROXY without and with the
#    probes (alternating runs), and the kernel memory of the maps.
if selected ebpf-cost && begin_check ebpf-cost; then
    # Rates from an instruction-counted clock (vmtest_icount, see qemu.rs) do not
    # follow the host's load, so there the throughput target is a verdict.
    ENFORCE=
    [ "$vmtest_icount" = 1 ] && ENFORCE=--enforce-throughput
    run_scenario ebpf-cost 900 --agent "$AGENT" --ebpf require ebpf-cost $ENFORCE $TOOLS
    end_check ebpf-cost
fi

echo "VMTEST-END kernel=$KERNEL checks=$CHECKS_RUN uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f

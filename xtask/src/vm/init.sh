#!/bin/sh
# PID 1 of the vm-test guest (busybox sh). Prints machine-readable lines on the serial
# console: "RESULT ..." per check, "CHECK-BEGIN name=..." / "CHECK-END name=... secs=..."
# around every check (the host names the open check if the boot runs out of time),
# and the "VMTEST-BOOTED" / "VMTEST-END" markers.
# busybox runs its own `ip` applet before PATH, so iproute2 is always called by full path.
#
# Adding a check:
#     if selected my-check && begin_check my-check; then
#         run_scenario my-check 900 --agent "$AGENT" ... $TOOLS    # or shell code
#         end_check my-check
#     fi
# begin_check waits until the kernel is back at its state before the first check and
# is false (the check failed, naming the leftovers) if it does not get there; a check
# must leave nothing behind (namespaces, rules, processes, kprobe events, BPF objects).
# Never sleep a guessed time: wait for the condition with `wait_for DESC TIMEOUT_S CMD...`
# (polls CMD until it succeeds; prints "# timeout waiting for DESC" and fails after
# TIMEOUT_S). Deadlines are generous: QEMU/TCG on a slow, busy machine is slow.
export PATH=/bin:/usr/sbin:/usr/bin
IPROUTE2=/usr/sbin/ip
IPTABLES=/usr/sbin/iptables-legacy
IP6TABLES=/usr/sbin/ip6tables-legacy
NFT=/usr/sbin/nft
AGENT=/bin/synproxy-agent
SCENARIO=/bin/synproxy-scenario
TOOLS="--ip $IPROUTE2 --iptables $IPTABLES --ip6tables $IP6TABLES --nft $NFT"
# How often wait_for re-evaluates its condition.
POLL_S=0.25

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

# --- timing and waiting -------------------------------------------------------------

# Centiseconds since boot (/proc/uptime always has two decimals).
now_cs() {
    local up
    read -r up _ < /proc/uptime
    # "1" prefix then minus 100: a fraction like "05" must not be read as octal.
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

# Centiseconds as seconds with one decimal.
cs_to_secs() {
    echo "$(($1 / 100)).$(($1 % 100 / 10))"
}

CHECKS_RUN=0
# mark_check_begin NAME: marks the start of a check on the console.
mark_check_begin() {
    CHECK_NAME=$1
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
    CHECK_NAME=
}

# wait_for DESC TIMEOUT_S CMD...: runs CMD until it succeeds (0) or TIMEOUT_S passed (1).
wait_for() {
    local desc=$1 limit=$2 deadline
    shift 2
    deadline=$(( $(now_cs) + limit * 100 ))
    while :; do
        "$@" && return 0
        if [ "$(now_cs)" -ge "$deadline" ]; then
            echo "# timeout waiting for $desc (${limit}s, in check ${CHECK_NAME:-none})"
            return 1
        fi
        sleep "$POLL_S"
    done
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

# --- helpers of the module checks ---------------------------------------------------

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

field() { # $1: line protocol line, $2: field name -> integer value
    echo "$1" | sed -n "s/.*[ ,]$2=\([0-9]*\)i.*/\1/p"
}

# Sum of each counter over all CPU rows of /proc/net/stat/synproxy in netns srv, as
# "syn_received cookie_invalid cookie_valid cookie_retrans conn_reopened".
proc_totals_in_srv() {
    $IPROUTE2 netns exec srv cat /proc/net/stat/synproxy | tail -n +2 | {
        s=0; i=0; v=0; r=0; o=0
        while read -r _entries syn inv val ret reo; do
            s=$((s + 0x$syn)); i=$((i + 0x$inv)); v=$((v + 0x$val)); r=$((r + 0x$ret)); o=$((o + 0x$reo))
        done
        echo "$s $i $v $r $o"
    }
}

# The agent's last synproxy line's totals in the same order, or "none".
agent_totals() {
    local line
    line=$(grep '^synproxy,' /tmp/agent.out | tail -n 1)
    [ -n "$line" ] || { echo none; return; }
    echo "$(field "$line" syn_received) $(field "$line" cookie_invalid) $(field "$line" cookie_valid) $(field "$line" cookie_retrans) $(field "$line" conn_reopened)"
}

# Drives cookie_valid in srv (xt, IPv4) through the scenario, its lines prefixed with
# "$1 scenario: "; sets SCEN_STATUS and SCEN_DRIVEN.
drive_cookie_valid_in_srv() {
    # Inside a check whose agent and srv are there on purpose: no clean-state wait.
    SPX_CLEAN_STATE= timeout 300 "$SCENARIO" matrix --server-netns srv --rules xt --family ipv4 --counter cookie_valid \
        --agent "$AGENT" $TOOLS >/tmp/scenario-in-srv.out 2>&1
    SCEN_STATUS=$?
    sed "s/^/$1 scenario: /" /tmp/scenario-in-srv.out
    SCEN_DRIVEN=$(sed -n 's/.* driven=\([0-9]*\).*/\1/p' /tmp/scenario-in-srv.out | head -n 1)
}

# Sum of the eBPF cookie_valid events of netns srv in the agent's output after line $1.
ebpf_cookie_valid_since() {
    local total=0 v
    for v in $(tail -n +$(($1 + 1)) /tmp/agent.out | grep '^synproxy_ebpf,' | grep 'netns=srv' \
            | sed -n 's/.*[ ,]cookie_valid=\([0-9]*\)i.*/\1/p'); do
        total=$((total + v))
    done
    echo "$total"
}

# How many of the agent's last two srv eBPF lines say reconcile="exact".
ebpf_exact_of_last_two() {
    grep '^synproxy_ebpf,' /tmp/agent.out | grep 'netns=srv' | tail -n 2 | grep -c 'reconcile="exact"'
}

# Conditions polled with wait_for.
agent_running() { kill -0 "$AGENT_PID" 2>/dev/null; }
# Every thread of the agent is stopped (state T in its stat line).
agent_stopped() {
    local stat
    for stat in /proc/"$AGENT_PID"/task/*/stat; do
        case "$(sed 's/.*) //' "$stat" 2>/dev/null)" in T*) ;; *) return 1 ;; esac
    done
}
count_in_agent_err() { grep -c "$1" /tmp/agent.err; }
agent_err_count_above() { [ "$(count_in_agent_err "$1")" -gt "$2" ]; }
# At least $2 centiseconds passed since $1 (a now_cs value).
cs_since_at_least() { [ $(( $(now_cs) - $1 )) -ge "$2" ]; }
# An exact srv eBPF round printed after stdout line $1.
exact_srv_round_after() {
    tail -n +$(($1 + 1)) /tmp/agent.out | grep '^synproxy_ebpf,' | grep 'netns=srv' \
        | grep -q 'reconcile="exact"'
}
# module-late is done when the agent's totals equal /proc's, its eBPF cookie_valid
# events since the start equal /proc's cookie_valid, and its last two srv eBPF rounds
# are exact.
agent_caught_up() {
    local proc
    proc=$(proc_totals_in_srv)
    set -- $proc
    [ "$(agent_totals)" = "$proc" ] \
        && [ "$(ebpf_cookie_valid_since 0)" = "$3" ] \
        && [ "$(ebpf_exact_of_last_two)" = 2 ]
}
# module-reload is done when the agent's cookie_valid is its total before the reload
# plus /proc's new counter, and eBPF counted the new events exactly.
agent_caught_up_after_reload() {
    local proc_val
    proc_val=$(proc_totals_in_srv | cut -d' ' -f3)
    set -- $(agent_totals)
    [ "$3" = "$(( ${reload_before_val:-0} + ${proc_val:-0} ))" ] \
        && [ "$(ebpf_cookie_valid_since "$reload_out_mark")" = "$proc_val" ] \
        && [ "$(ebpf_exact_of_last_two)" = 2 ]
}

# --- the checks ---------------------------------------------------------------------

# 1. Everything except nf_synproxy_core and its dependants.
begin_check modules-early
load_modules /etc/vmtest/modules-early
end_check modules-early

# 2. module-late: the agent starts while /proc/net/stat/synproxy does not exist yet.
if ! selected module-late || ! begin_check module-late; then
    load_modules /etc/vmtest/modules-late
else
$IPROUTE2 netns add srv
$IPROUTE2 -n srv link set lo up
# The agent runs in the root netns and reads srv through --netns (via /run/netns/srv).
# With eBPF: the probes cannot attach yet either; they must attach once the module loads.
"$AGENT" --interval 500ms --netns srv >/tmp/agent.out 2>/tmp/agent.err &
AGENT_PID=$!
MISSING='file not found.*nf_synproxy_core'
ATTACHED='eBPF probes attached'
# The missing file must be logged, then not again while the agent keeps retrying. A
# failing round prints nothing, so "retrying" is measured on the guest clock: three
# more intervals (3 x 500 ms) after the report was seen.
wait_for "the agent to log the missing /proc/net/stat/synproxy" 120 agent_err_count_above "$MISSING" 0
reported_cs=$(now_cs)
wait_for "3 agent intervals after the missing-file report" 60 cs_since_at_least "$reported_cs" 150
missing_reports=$(count_in_agent_err "$MISSING")
stderr_lines_before=$(wc -l < /tmp/agent.err)
if agent_running; then alive_while_missing=yes; else alive_while_missing=no; fi
if [ -e /proc/net/stat/synproxy ]; then file_absent_before=no; else file_absent_before=yes; fi

# The clean-state baseline of the new modules is recorded right after they load. An
# agent attaching its probes then holds a module reference for a moment, and a baseline
# taken in that moment would never be met again: the agent is stopped meanwhile.
kill -STOP "$AGENT_PID"
wait_for "every agent thread to stop" 60 agent_stopped
load_modules /etc/vmtest/modules-late
kill -CONT "$AGENT_PID"
# Traffic only once the probes are attached and one exact round followed, so eBPF
# sees every event.
if wait_for "the agent to attach its probes after the module loaded" 120 \
        agent_err_count_above "$ATTACHED" 0; then
    ebpf_attached=yes
else
    ebpf_attached=no
fi
mark=$(wc -l < /tmp/agent.out)
wait_for "an exact eBPF round after the late attach" 60 exact_srv_round_after "$mark"

drive_cookie_valid_in_srv module-late
scenario_status=$SCEN_STATUS
driven=$SCEN_DRIVEN
# eBPF: the synproxy_ebpf lines carry per-interval events; their sum since the probes
# attached (after the module loaded, before any traffic) must equal the /proc total.
wait_for "the agent to report srv's /proc totals and eBPF events" 60 agent_caught_up
if agent_running; then alive_after=yes; else alive_after=no; fi
stderr_lines_after=$(wc -l < /tmp/agent.err)
if [ "$stderr_lines_after" -gt "$stderr_lines_before" ]; then recovery_logged=yes; else recovery_logged=no; fi
set -- $(proc_totals_in_srv)
proc_syn=$1; proc_inv=$2; proc_val=$3; proc_ret=$4; proc_reo=$5
set -- $(agent_totals)
agent_syn=$1; agent_inv=$2; agent_val=$3; agent_ret=$4; agent_reo=$5
ebpf_val=$(ebpf_cookie_valid_since 0)
ebpf_exact=$(ebpf_exact_of_last_two)
status=PASS
[ "$missing_reports" = 1 ] || status=FAIL
[ "$alive_while_missing" = yes ] && [ "$alive_after" = yes ] || status=FAIL
[ "$file_absent_before" = yes ] || status=FAIL
[ "$recovery_logged" = yes ] || status=FAIL
[ "$scenario_status" = 0 ] || status=FAIL
[ "${proc_val:-0}" -gt 0 ] || status=FAIL
[ "$agent_syn" = "$proc_syn" ] && [ "$agent_inv" = "$proc_inv" ] && [ "$agent_val" = "$proc_val" ] \
    && [ "$agent_ret" = "$proc_ret" ] && [ "$agent_reo" = "$proc_reo" ] || status=FAIL
[ "$ebpf_val" = "$proc_val" ] && [ "$ebpf_exact" = 2 ] && [ "$ebpf_attached" = yes ] || status=FAIL
echo "RESULT kernel=$KERNEL check=module-late counter=cookie_valid driven=${driven:-none} proc=${proc_val:-none} agent=${agent_val:-none} ebpf=$ebpf_val ebpf_attached_late=$ebpf_attached ebpf_reconcile_exact=$ebpf_exact proc_totals=$proc_syn/$proc_inv/$proc_val/$proc_ret/$proc_reo agent_totals=${agent_syn:-none}/${agent_inv:-none}/${agent_val:-none}/${agent_ret:-none}/${agent_reo:-none} missing_reports=$missing_reports recovery_logged=$recovery_logged agent_alive=$alive_after status=$status"
sed 's/^/module-late agent stderr: /' /tmp/agent.err | tail -n 20
if [ "$status" != PASS ]; then
    tail -n 3 /tmp/agent.out | sed 's/^/module-late agent stdout: /'
fi
end_check module-late

# 2b. module-reload: with the same agent still running, unload nf_synproxy_core and its
#     dependants, load them again and drive traffic. The kernel's counters restart at 0
#     (a new proc entry): the agent must log the reset and continue its totals from the
#     new baseline (old total + new counters, never a drop), detach and re-attach its
#     probes, and count the new events exactly (eBPF == /proc since the reload).
# It goes on from module-late's state (its agent, its srv): no clean-state wait.
mark_check_begin module-reload
set -- $(agent_totals)
reload_before_val=$3
reload_attach_before=$(count_in_agent_err "$ATTACHED")
reload_missing_before=$(count_in_agent_err "$MISSING")
reload_unloaded=yes
for module in $(sed '1!G;h;$!d' /etc/vmtest/modules-late); do
    rmmod "$(basename "$module" .ko | tr - _)" 2>/tmp/rmmod.err || { reload_unloaded=no; sed 's/^/rmmod: /' /tmp/rmmod.err; }
done
if [ -e /sys/module/nf_synproxy_core ]; then reload_unloaded=no; fi
# The agent must see the file gone before it comes back (that is how it tells new
# counters from old ones that happen to be equal).
wait_for "the agent to log the unloaded module's missing file" 120 \
    agent_err_count_above "$MISSING" "$reload_missing_before"
load_modules /etc/vmtest/modules-late
# Traffic only once the probes are back and an exact round followed.
if wait_for "the agent to re-attach its probes" 120 \
        agent_err_count_above "$ATTACHED" "$reload_attach_before"; then
    reload_reattached=yes
else
    reload_reattached=no
fi
reload_out_mark=$(wc -l < /tmp/agent.out)
wait_for "an exact eBPF round after the re-attach" 60 exact_srv_round_after "$reload_out_mark"
drive_cookie_valid_in_srv module-reload
reload_scenario_status=$SCEN_STATUS
reload_driven=$SCEN_DRIVEN
wait_for "the agent's total to reach old total + /proc after the reload" 60 \
    agent_caught_up_after_reload
reload_proc_val=$(proc_totals_in_srv | cut -d' ' -f3)
set -- $(agent_totals)
reload_agent_val=$3
reload_ebpf_val=$(ebpf_cookie_valid_since "$reload_out_mark")
reload_ebpf_exact=$(ebpf_exact_of_last_two)
if grep -q 'counters were recreated' /tmp/agent.err; then reset_logged=yes; else reset_logged=no; fi
if agent_running; then reload_alive=yes; else reload_alive=no; fi
reload_expected=$(( ${reload_before_val:-0} + ${reload_proc_val:-0} ))
status=PASS
[ "$reload_unloaded" = yes ] && [ "$reload_reattached" = yes ] && [ "$reload_alive" = yes ] || status=FAIL
[ "$reload_scenario_status" = 0 ] && [ "$reset_logged" = yes ] || status=FAIL
[ "${reload_proc_val:-0}" = "${reload_driven:-none}" ] || status=FAIL
[ "${reload_agent_val:-none}" = "$reload_expected" ] || status=FAIL
[ "$reload_ebpf_val" = "${reload_proc_val:-none}" ] && [ "$reload_ebpf_exact" = 2 ] || status=FAIL
echo "RESULT kernel=$KERNEL check=module-reload counter=cookie_valid driven=${reload_driven:-none} proc=${reload_proc_val:-none} agent=${reload_agent_val:-none} agent_before=${reload_before_val:-none} agent_expected=$reload_expected ebpf=$reload_ebpf_val ebpf_reattached=$reload_reattached ebpf_reconcile_exact=$reload_ebpf_exact unloaded=$reload_unloaded reset_logged=$reset_logged agent_alive=$reload_alive status=$status"
if [ "$status" != PASS ]; then
    tail -n 20 /tmp/agent.err | sed 's/^/module-reload agent stderr: /'
    tail -n 4 /tmp/agent.out | sed 's/^/module-reload agent stdout: /'
fi
kill "$AGENT_PID" 2>/dev/null
wait "$AGENT_PID" 2>/dev/null
$IPROUTE2 netns del srv
end_check module-reload
fi

# 2c. clean-state: the precondition itself. A namespace with an xt SYNPROXY rule, its
#     /run/netns name removed and held only by a process, must fail the precondition
#     naming that namespace with its holder and ipt_SYNPROXY's extra reference; once
#     the holder is gone the kernel tears the namespace down and the precondition holds.
if selected clean-state && begin_check clean-state; then
    cs_status=PASS
    $IPROUTE2 netns add cs-leak
    $IPROUTE2 netns exec cs-leak $IPTABLES -w -A INPUT -p tcp --dport 9 -j SYNPROXY --mss 1460 \
        || cs_status=FAIL
    $IPROUTE2 netns exec cs-leak sleep 600 &
    cs_holder=$!
    # The holder is in the namespace once its ns link differs from ours.
    cs_holder_inside() { [ "$(readlink /proc/$cs_holder/ns/net)" != "$(readlink /proc/self/ns/net)" ]; }
    wait_for "the holder to enter cs-leak" 30 cs_holder_inside || cs_status=FAIL
    $IPROUTE2 netns del cs-leak
    "$SCENARIO" --clean-state check "$BASELINE" clean-state-probe 2 >/tmp/cs-held.out 2>&1
    cs_held_exit=$?
    sed 's/^/clean-state probe while held: /' /tmp/cs-held.out
    grep -q "^RESULT .*check=clean-state-probe precondition=clean-state .*module:ipt_SYNPROXY:1/0.*status=FAIL" \
        /tmp/cs-held.out && cs_found_module=yes || cs_found_module=no
    grep -q "network namespace net:\[[0-9]*\] held by pid $cs_holder (sleep): its netns" /tmp/cs-held.out \
        && cs_found_netns=yes || cs_found_netns=no
    kill "$cs_holder"; wait "$cs_holder" 2>/dev/null
    "$SCENARIO" --clean-state check "$BASELINE" clean-state-probe "$CLEAN_STATE_S" >/tmp/cs-released.out 2>&1
    cs_released_exit=$?
    sed 's/^/clean-state probe after release: /' /tmp/cs-released.out
    [ "$cs_held_exit" = 1 ] && [ "$cs_found_module" = yes ] && [ "$cs_found_netns" = yes ] \
        && [ "$cs_released_exit" = 0 ] || cs_status=FAIL
    echo "RESULT kernel=$KERNEL check=clean-state held_exit=$cs_held_exit found_module=$cs_found_module found_netns=$cs_found_netns released_exit=$cs_released_exit status=$cs_status"
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

# The probe_type of the agent's last synproxy_ebpf_probes line.
probe_type_now() {
    grep '^synproxy_ebpf_probes' /tmp/agent.out | tail -n 1 | sed -n 's/.*probe_type="\([a-z]*\)".*/\1/p'
}
# attached= of the agent's last synproxy_ebpf_probes line.
probes_attached_now() {
    field "$(grep '^synproxy_ebpf_probes' /tmp/agent.out | tail -n 1)" attached
}
# The nf_synproxy_core BTF object id named by the agent's attach log line number $1.
btf_id_of_attach() {
    grep "$ATTACHED" /tmp/agent.err | sed -n "${1}p" | sed -n 's/.*nf_synproxy_core (BTF id \([0-9]*\)).*/\1/p'
}
# rmmod every late module, dependants first; the names that failed in $RMMOD_FAILED.
rmmod_late() {
    RMMOD_FAILED=
    : > /tmp/rmmod.err
    for module in $(sed '1!G;h;$!d' /etc/vmtest/modules-late); do
        name=$(basename "$module" .ko | tr - _)
        [ -e "/sys/module/$name" ] || continue
        rmmod "$name" 2>>/tmp/rmmod.err || RMMOD_FAILED="${RMMOD_FAILED:+$RMMOD_FAILED,}$name"
    done
}

# nf_synproxy_core's reference count is 0 (nothing holds it).
synproxy_core_unheld() { [ "$(cat /sys/module/nf_synproxy_core/refcnt 2>/dev/null)" = 0 ]; }
# Unloads the late modules; true once nf_synproxy_core is gone.
late_unloaded() { rmmod_late; [ ! -e /sys/module/nf_synproxy_core ]; }

# 10. fentry and module reloads. A loaded fentry program on a module function
#     holds the module (Linux 6.4+; 5.12-6.3 while attached). With the agent running with
#     --probes fentry: unloading nf_synproxy_core must fail "in use" while the agent keeps
#     counting; SIGUSR1 releases it; the module is unloaded and loaded again, and the
#     agent must load its programs again against the new module BTF (another BTF object
#     id in its attach log) and count the new events exactly. On a kernel without module
#     BTF (5.10) the agent must warn once and use kprobes, which do not hold the module.
if selected fentry-module && begin_check fentry-module; then
$IPROUTE2 netns add srv
$IPROUTE2 -n srv link set lo up
MISSING='file not found.*nf_synproxy_core'
ATTACHED='eBPF probes attached'
"$AGENT" --probes fentry --interval 500ms --netns srv >/tmp/agent.out 2>/tmp/agent.err &
AGENT_PID=$!
fm_status=PASS
fm_expected=kprobe
[ -e /sys/kernel/btf/nf_synproxy_core ] && fm_expected=fentry
wait_for "the --probes fentry agent to attach" 120 agent_err_count_above "$ATTACHED" 0 || fm_status=FAIL
mark=$(wc -l < /tmp/agent.out)
wait_for "an exact eBPF round after the attach" 60 exact_srv_round_after "$mark" || fm_status=FAIL
fm_type=$(probe_type_now)
fm_warnings=$(grep -c -e '--probes fentry: ' /tmp/agent.err)
drive_cookie_valid_in_srv fentry-module
[ "$SCEN_STATUS" = 0 ] || fm_status=FAIL
wait_for "the agent to report srv's /proc totals and eBPF events" 60 agent_caught_up || fm_status=FAIL
fm_val=$(proc_totals_in_srv | cut -d' ' -f3)
fm_ebpf_val=$(ebpf_cookie_valid_since 0)
[ "$fm_type" = "$fm_expected" ] && [ "${fm_val:-0}" -gt 0 ] && [ "$fm_ebpf_val" = "$fm_val" ] || fm_status=FAIL
if [ "$fm_expected" = fentry ]; then
    [ "$fm_warnings" = 0 ] || fm_status=FAIL
    fm_btf1=$(btf_id_of_attach 1)
    # Held: the dependants go, nf_synproxy_core stays, "in use".
    rmmod_late
    fm_held_failed=$RMMOD_FAILED
    # kmod's rmmod says "in use"; busybox's (the guest's, O_NONBLOCK) EWOULDBLOCK,
    # "Resource temporarily unavailable": the module's reference count is not 0.
    if grep -q -e 'in use' -e 'temporarily unavailable' /tmp/rmmod.err; then fm_in_use=yes; else fm_in_use=no; fi
    fm_refcnt_held=$(cat /sys/module/nf_synproxy_core/refcnt 2>/dev/null || echo none)
    case "$fm_held_failed" in *nf_synproxy_core*) fm_held=yes ;; *) fm_held=no ;; esac
    sed 's/^/fentry-module rmmod while held: /' /tmp/rmmod.err
    # Only nf_synproxy_core may stay: anything else names what holds it.
    [ "$fm_held_failed" = nf_synproxy_core ] || "$SCENARIO" --clean-state show "$BASELINE" "fentry-module while held" 2>&1
    if agent_running; then fm_alive=yes; else fm_alive=no; fi
    [ "$fm_held" = yes ] && [ "$fm_in_use" = yes ] && [ "$fm_alive" = yes ] || fm_status=FAIL
    [ "${fm_refcnt_held:-0}" != none ] && [ "${fm_refcnt_held:-0}" -gt 0 ] || fm_status=FAIL
    # Released on request: then the modules go and come back.
    kill -USR1 "$AGENT_PID"
    wait_for "the agent to release its probes on SIGUSR1" 60 agent_err_count_above 'eBPF probes released' 0 || fm_status=FAIL
    # The kernel drops a freed program's module reference a moment later.
    wait_for "nf_synproxy_core's refcnt to drop to 0 after SIGUSR1" 60 synproxy_core_unheld \
        || { fm_status=FAIL; "$SCENARIO" --clean-state show "$BASELINE" "fentry-module after SIGUSR1" 2>&1; }
    fm_refcnt_released=$(cat /sys/module/nf_synproxy_core/refcnt 2>/dev/null || echo none)
    reload_missing_before=$(count_in_agent_err "$MISSING")
    rmmod_late
    fm_released_failed=$RMMOD_FAILED
    [ -z "$fm_released_failed" ] && [ ! -e /sys/module/nf_synproxy_core ] || { fm_status=FAIL; sed 's/^/fentry-module rmmod after release: /' /tmp/rmmod.err; }
    wait_for "the agent to log the unloaded module's missing file" 120 \
        agent_err_count_above "$MISSING" "$reload_missing_before" || fm_status=FAIL
    set -- $(agent_totals)
    reload_before_val=$3
    load_modules /etc/vmtest/modules-late
    wait_for "the agent to load its fentry programs again" 120 agent_err_count_above "$ATTACHED" 1 || fm_status=FAIL
    fm_btf2=$(btf_id_of_attach 2)
    [ -n "$fm_btf1" ] && [ -n "$fm_btf2" ] && [ "$fm_btf1" != "$fm_btf2" ] || fm_status=FAIL
    reload_out_mark=$(wc -l < /tmp/agent.out)
    wait_for "an exact eBPF round after the reload" 60 exact_srv_round_after "$reload_out_mark" || fm_status=FAIL
    drive_cookie_valid_in_srv fentry-module-reload
    [ "$SCEN_STATUS" = 0 ] || fm_status=FAIL
    wait_for "the agent's total to reach old total + /proc after the reload" 60 \
        agent_caught_up_after_reload || fm_status=FAIL
    fm_reload_val=$(proc_totals_in_srv | cut -d' ' -f3)
    fm_reload_ebpf=$(ebpf_cookie_valid_since "$reload_out_mark")
    [ "${fm_reload_val:-0}" -gt 0 ] && [ "$fm_reload_ebpf" = "$fm_reload_val" ] || fm_status=FAIL
    fm_type_after=$(probe_type_now)
    [ "$fm_type_after" = fentry ] || fm_status=FAIL
    # SIGTERM: nothing of the agent holds the module any more.
    kill "$AGENT_PID"; wait "$AGENT_PID"; fm_exit=$?
    if wait_for "the late modules to unload after the agent exited" 60 late_unloaded; then
        fm_after_exit_failed=
    else
        fm_after_exit_failed=$RMMOD_FAILED
    fi
    [ "$fm_exit" = 0 ] && [ -z "$fm_after_exit_failed" ] || { fm_status=FAIL; sed 's/^/fentry-module rmmod after exit: /' /tmp/rmmod.err; }
    load_modules /etc/vmtest/modules-late
    echo "RESULT kernel=$KERNEL check=fentry-module probes=fentry probe_type=$fm_type expected_probe_type=$fm_expected cookie_valid=$fm_val ebpf=$fm_ebpf_val rmmod_while_held=${fm_held_failed:-none} in_use=$fm_in_use refcnt_held=$fm_refcnt_held refcnt_released=$fm_refcnt_released rmmod_after_release=${fm_released_failed:-ok} btf_id_before=${fm_btf1:-none} btf_id_after=${fm_btf2:-none} proc_after_reload=${fm_reload_val:-none} ebpf_after_reload=$fm_reload_ebpf probe_type_after=$fm_type_after exit=$fm_exit rmmod_after_exit=${fm_after_exit_failed:-ok} agent_alive_while_held=$fm_alive status=$fm_status"
else
    # No module BTF: one warning naming the reason, then kprobes.
    [ "$fm_warnings" = 1 ] || fm_status=FAIL
    fm_warning=$(grep -- '--probes fentry: ' /tmp/agent.err | head -n 1 | sed 's/.*--probes fentry: //; s/ /_/g')
    kill "$AGENT_PID"; wait "$AGENT_PID"; fm_exit=$?
    [ "$fm_exit" = 0 ] || fm_status=FAIL
    echo "RESULT kernel=$KERNEL check=fentry-module probes=fentry probe_type=$fm_type expected_probe_type=$fm_expected fallback_warnings=$fm_warnings cookie_valid=$fm_val ebpf=$fm_ebpf_val exit=$fm_exit status=$fm_status"
    echo "# fentry-module fallback warning: $fm_warning"
fi
if [ "$fm_status" != PASS ]; then
    tail -n 20 /tmp/agent.err | sed 's/^/fentry-module agent stderr: /'
    tail -n 4 /tmp/agent.out | sed 's/^/fentry-module agent stdout: /'
fi
kill "$AGENT_PID" 2>/dev/null
$IPROUTE2 netns del srv
end_check fentry-module
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

#!/bin/sh
# PID 1 of the vm-test guest (busybox sh). Prints machine-readable lines on the serial
# console: "RESULT ..." per check, "VMTEST-BOOTED" and "VMTEST-END" markers.
# busybox runs its own `ip` applet before PATH, so iproute2 is always called by full path.
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

load_modules() { # $1: list file
    while read -r module; do
        [ -n "$module" ] || continue
        if ! insmod "$module" 2>/tmp/insmod.err; then
            echo "RESULT kernel=$KERNEL check=module-load module=$(basename "$module" .ko) status=FAIL"
            sed 's/^/insmod: /' /tmp/insmod.err
        fi
    done < "$1"
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

# Drives cookie_valid in srv (xt, IPv4) through the scenario, its lines prefixed with
# "$1 scenario: "; sets SCEN_STATUS and SCEN_DRIVEN.
drive_cookie_valid_in_srv() {
    timeout 120 "$SCENARIO" --server-netns srv --rules xt --family ipv4 --counter cookie_valid \
        --agent "$AGENT" $TOOLS >/tmp/scenario-in-srv.out 2>&1
    SCEN_STATUS=$?
    sed "s/^/$1 scenario: /" /tmp/scenario-in-srv.out
    SCEN_DRIVEN=$(sed -n 's/.* driven=\([0-9]*\).*/\1/p' /tmp/scenario-in-srv.out | head -n 1)
}

# Sum of the eBPF cookie_valid events of netns srv in the agent's output after line $1.
ebpf_cookie_valid_since() {
    total=0
    for v in $(tail -n +$(($1 + 1)) /tmp/agent.out | grep '^synproxy_ebpf,' | grep 'netns=srv' \
            | sed -n 's/.*[ ,]cookie_valid=\([0-9]*\)i.*/\1/p'); do
        total=$((total + v))
    done
    echo "$total"
}

# 1. Everything except nf_synproxy_core and its dependants.
load_modules /etc/vmtest/modules-early

# 2. module-late: the agent starts while /proc/net/stat/synproxy does not exist yet.
$IPROUTE2 netns add srv
$IPROUTE2 -n srv link set lo up
# The agent runs in the root netns and reads srv through --netns (via /run/netns/srv).
# With eBPF: the probes cannot attach yet either; they must attach once the module loads.
"$AGENT" --interval 500ms --netns srv >/tmp/agent.out 2>/tmp/agent.err &
AGENT_PID=$!
sleep 2
missing_reports=$(grep -c 'file not found.*nf_synproxy_core' /tmp/agent.err)
stderr_lines_before=$(wc -l < /tmp/agent.err)
if kill -0 "$AGENT_PID" 2>/dev/null; then alive_while_missing=yes; else alive_while_missing=no; fi
if [ -e /proc/net/stat/synproxy ]; then file_absent_before=no; else file_absent_before=yes; fi

load_modules /etc/vmtest/modules-late

drive_cookie_valid_in_srv module-late
scenario_status=$SCEN_STATUS
driven=$SCEN_DRIVEN
sleep 1.5
if kill -0 "$AGENT_PID" 2>/dev/null; then alive_after=yes; else alive_after=no; fi
stderr_lines_after=$(wc -l < /tmp/agent.err)
if [ "$stderr_lines_after" -gt "$stderr_lines_before" ]; then recovery_logged=yes; else recovery_logged=no; fi
agent_line=$(grep '^synproxy,' /tmp/agent.out | tail -n 1)
set -- $(proc_totals_in_srv)
proc_syn=$1; proc_inv=$2; proc_val=$3; proc_ret=$4; proc_reo=$5
agent_syn=$(field "$agent_line" syn_received)
agent_inv=$(field "$agent_line" cookie_invalid)
agent_val=$(field "$agent_line" cookie_valid)
agent_ret=$(field "$agent_line" cookie_retrans)
agent_reo=$(field "$agent_line" conn_reopened)
# eBPF: the synproxy_ebpf lines carry per-interval events; their sum since the probes
# attached (after the module loaded, before any traffic) must equal the /proc total.
ebpf_val=$(ebpf_cookie_valid_since 0)
ebpf_exact=$(grep '^synproxy_ebpf,' /tmp/agent.out | grep 'netns=srv' | tail -n 2 | grep -c 'reconcile="exact"')
if grep -q 'eBPF probes attached' /tmp/agent.err; then ebpf_attached=yes; else ebpf_attached=no; fi
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
# 2b. module-reload: with the same agent still running, unload nf_synproxy_core and its
#     dependants, load them again and drive traffic. The kernel's counters restart at 0
#     (a new proc entry): the agent must log the reset and continue its totals from the
#     new baseline (old total + new counters, never a drop), detach and re-attach its
#     probes, and count the new events exactly (eBPF == /proc since the reload).
reload_before=$(grep '^synproxy,' /tmp/agent.out | tail -n 1)
reload_before_val=$(field "$reload_before" cookie_valid)
reload_out_mark=$(wc -l < /tmp/agent.out)
reload_attach_before=$(grep -c 'eBPF probes attached' /tmp/agent.err)
reload_unloaded=yes
for module in $(sed '1!G;h;$!d' /etc/vmtest/modules-late); do
    rmmod "$(basename "$module" .ko | tr - _)" 2>/tmp/rmmod.err || { reload_unloaded=no; sed 's/^/rmmod: /' /tmp/rmmod.err; }
done
if [ -e /sys/module/nf_synproxy_core ]; then reload_unloaded=no; fi
sleep 1
load_modules /etc/vmtest/modules-late
# Traffic only once the probes are back, so eBPF sees every new event.
reload_reattached=no
for _ in 1 2 3 4 5 6 7 8 9 10; do
    if [ "$(grep -c 'eBPF probes attached' /tmp/agent.err)" -gt "$reload_attach_before" ]; then
        reload_reattached=yes
        break
    fi
    sleep 0.5
done
sleep 1
drive_cookie_valid_in_srv module-reload
reload_scenario_status=$SCEN_STATUS
reload_driven=$SCEN_DRIVEN
sleep 1.5
set -- $(proc_totals_in_srv)
reload_proc_val=$3
reload_after=$(grep '^synproxy,' /tmp/agent.out | tail -n 1)
reload_agent_val=$(field "$reload_after" cookie_valid)
reload_ebpf_val=$(ebpf_cookie_valid_since "$reload_out_mark")
reload_ebpf_exact=$(grep '^synproxy_ebpf,' /tmp/agent.out | grep 'netns=srv' | tail -n 2 | grep -c 'reconcile="exact"')
if grep -q 'counters were recreated' /tmp/agent.err; then reset_logged=yes; else reset_logged=no; fi
if kill -0 "$AGENT_PID" 2>/dev/null; then reload_alive=yes; else reload_alive=no; fi
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

# 3. The full matrix: (xt|nft) x (ipv4|ipv6) x every counter, each in fresh netns.
#    Every check also runs the agent with eBPF across the traffic: ebpf= must equal proc=.
timeout 420 "$SCENARIO" --agent "$AGENT" --ebpf require $TOOLS
echo "scenario exit status $?"

# 4. The xt rules once more through iptables-nft: nft_compat runs the same xt targets
#    from an nf_tables chain. Its lines are tagged iptables=nft.
timeout 300 "$SCENARIO" --agent "$AGENT" --ebpf require --rules xt --ip $IPROUTE2 \
    --iptables /usr/sbin/iptables-nft --ip6tables /usr/sbin/ip6tables-nft --nft $NFT 2>&1 \
    | sed '/^RESULT /s/ rules=xt / rules=xt iptables=nft /; s/^SUMMARY /SUMMARY iptables=nft /'

# 5. eBPF under a flood (20,000 SYNs + 5,000 bad ACKs: eBPF == /proc, no probe misses),
#    and shutdown: SIGTERM, SIGINT, stdin EOF each stop the agent within 1 s and leave
#    no kprobe event, BPF program or map behind.
timeout 240 "$SCENARIO" --agent "$AGENT" --ebpf require --flood $TOOLS
echo "flood scenario exit status $?"

# 6. Sustained flood (issue 7): one server netns, xt and nft ports, IPv4 and IPv6,
#    among 20+ other namespaces; an agent with eBPF samples every 200 ms
#    (--netns all) while 100,000 SYNs + 30,000 bad ACKs run for at least 5 s. Every
#    busy round must be reconcile="exact", 0 probe misses, eBPF sum == /proc delta.
timeout 300 "$SCENARIO" --agent "$AGENT" --ebpf require --sustained $TOOLS
echo "sustained scenario exit status $?"

# 7. Lifecycle (issue 7): SIGTERM at delays covering start-up and attach (exit 0,
#    nothing left), kill -9 then restart as PID 1 of a PID namespace, and two
#    agents at once, each PID 1 of its own PID namespace (both exact).
timeout 300 "$SCENARIO" --agent "$AGENT" --ebpf require --lifecycle $TOOLS
echo "lifecycle scenario exit status $?"

echo "VMTEST-END kernel=$KERNEL uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f

// The alerting rules. Each alert has a section in docs/runbooks.md, which
// the test suite checks, and a runbook_url pointing there.
{
  local c = self._config,
  local runbook(name) = c.runbookBase + '#' + std.asciiLower(name),
  local alert(name, rule) = rule {
    alert: name,
    annotations+: { runbook_url: runbook(name) },
  },

  prometheusAlerts+:: {
    groups+: [{
      name: 'synproxy',
      rules: [
        // Many cookie SYN/ACKs sent, few valid ACKs back: most SYNs come from
        // sources that never complete the handshake (spoofed or abandoned).
        alert('SynproxySynFlood', {
          expr: |||
            rate(synproxy_syn_received_total[2m]) > %(synFloodRate)s
            and
            rate(synproxy_cookie_valid_total[2m]) < %(synFloodValidShare)s * rate(synproxy_syn_received_total[2m])
          ||| % c,
          'for': c.synFloodFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'SYN flood against netns {{ $labels.netns }} on {{ $labels.instance }}',
            description: 'SYNPROXY answers {{ $value | humanize }} SYNs per second with cookies and fewer than half come back as valid ACKs.',
          },
        }),
        // Most cookie ACKs are invalid: an ACK flood, a scan, or clients
        // whose handshakes are broken (window scaling, MSS, timestamps).
        alert('SynproxyInvalidCookieRatioHigh', {
          expr: |||
            rate(synproxy_cookie_invalid_total[5m])
              / (rate(synproxy_cookie_invalid_total[5m]) + rate(synproxy_cookie_valid_total[5m]))
            > %(invalidCookieRatio)s
            and
            rate(synproxy_cookie_invalid_total[5m]) > %(invalidCookieMinRate)s
          ||| % c,
          'for': c.invalidCookieFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Invalid SYN cookies high in netns {{ $labels.netns }} on {{ $labels.instance }}',
            description: '{{ $value | humanizePercentage }} of the ACKs SYNPROXY checked carried an invalid cookie over 5 minutes.',
          },
        }),
        // The agent's own detector: a rate above what this namespace (or
        // destination port) normally reaches, within a second of its onset.
        alert('SynproxyAttack', {
          expr: 'synproxy_attack_active == 1',
          labels: { severity: 'warning' },
          annotations: {
            summary: '{{ $labels.kind }} on netns {{ $labels.netns }} port {{ $labels.port }} on {{ $labels.instance }}',
            description: 'The agent detected an attack against its learnt baseline; its synproxy_attack lines and log name the rate, peak, top sources and ports.',
          },
        }),
        // The eBPF counts did not reconcile with the kernel's counters:
        // probes detached (proc-only), events missed, or lagging.
        alert('SynproxyEbpfReconcileNotExact', {
          expr: 'synproxy_ebpf_reconcile_status{status="exact"} == 0',
          'for': c.reconcileFor,
          labels: { severity: 'info' },
          annotations: {
            summary: 'eBPF counts of netns {{ $labels.netns }} on {{ $labels.instance }} not exact',
            description: 'The eBPF per-event counts have not matched /proc/net/stat/synproxy for 10 minutes; the kernel totals are still right, the per-family split and peak rates are not.',
          },
        }),
        // The agent is down or not scraped.
        alert('SynproxyAgentAbsent', {
          expr: 'up{job="%(jobName)s"} == 0 or absent(up{job="%(jobName)s"})' % c,
          'for': c.absentFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'synproxy-agent down or not scraped{{ with $labels.instance }} ({{ . }}){{ end }}',
            description: 'Prometheus has had no metrics from synproxy-agent for 5 minutes.',
          },
        }),
        // The agent answers scrapes but has stopped sampling.
        alert('SynproxyAgentNotSampling', {
          expr: 'time() - synproxy_agent_last_round_timestamp_seconds > %(notSamplingSecs)s' % c,
          'for': c.notSamplingFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'synproxy-agent on {{ $labels.instance }} has not sampled for 5 minutes',
            description: 'Its last round ended {{ $value | humanizeDuration }} ago.',
          },
        }),
      ],
    }],
  },
}

// The Grafana dashboard: one row per question an operator asks. Every query
// filters on the job, instance and netns variables; the test suite runs each
// one against a real Prometheus scraping the agent.
{
  local c = self._config,
  local ds = { type: 'prometheus', uid: '${datasource}' },
  local agentSel = 'job=~"$job", instance=~"$instance"',
  local nsSel = agentSel + ', netns=~"$netns"',

  local target(expr, legend, ref) = {
    datasource: ds,
    expr: expr,
    legendFormat: legend,
    refId: ref,
  },
  local targets(list) = [
    target(list[i][0], list[i][1], std.char(std.codepoint('A') + i))
    for i in std.range(0, std.length(list) - 1)
  ],

  local thresholds(steps) = {
    mode: 'absolute',
    steps: [{ color: 'green', value: null }] + [
      { color: s[1], value: s[0] }
      for s in steps
    ],
  },

  local timeseries(title, description, unit, queries, steps=[]) = {
    type: 'timeseries',
    title: title,
    description: description,
    datasource: ds,
    fieldConfig: {
      defaults: {
        unit: unit,
        min: 0,
        thresholds: thresholds(steps),
        custom: {
          drawStyle: 'line',
          lineWidth: 1,
          fillOpacity: 10,
          showPoints: 'never',
          spanNulls: false,
          thresholdsStyle: { mode: if steps == [] then 'off' else 'dashed' },
        },
      },
      overrides: [],
    },
    options: {
      legend: { showLegend: true, displayMode: 'table', placement: 'bottom', calcs: ['lastNotNull', 'max'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
    targets: targets(queries),
  },

  local stat(title, description, unit, queries, steps=[]) = {
    type: 'stat',
    title: title,
    description: description,
    datasource: ds,
    fieldConfig: {
      defaults: { unit: unit, thresholds: thresholds(steps) },
      overrides: [],
    },
    options: {
      reduceOptions: { values: false, calcs: ['lastNotNull'], fields: '' },
      orientation: 'auto',
      textMode: 'value_and_name',
      colorMode: 'value',
      graphMode: 'none',
      justifyMode: 'auto',
      wideLayout: true,
      showPercentChange: false,
      percentChangeColorMode: 'standard',
    },
    targets: targets(queries),
  },

  local table(title, description, queries) = {
    type: 'table',
    title: title,
    description: description,
    datasource: ds,
    fieldConfig: {
      defaults: { custom: { align: 'auto', cellOptions: { type: 'auto' }, inspect: false } },
      overrides: [],
    },
    options: {
      frameIndex: 0,
      showHeader: true,
      cellHeight: 'sm',
      sortBy: [{ displayName: 'Value', desc: true }],
    },
    targets: [t { format: 'table', instant: true } for t in targets(queries)],
    transformations: [{ id: 'organize', options: { excludeByName: { Time: true } } }],
  },

  local row(title) = { type: 'row', title: title, collapsed: false, panels: [] },

  // Rows take the full width; other panels are laid out left to right in
  // lines of 24 columns (w: the panel's width, default 12).
  local layout(items) = std.foldl(
    function(acc, item)
      local w = if item.type == 'row' then 24 else std.get(item, 'w', 12);
      local wrap = acc.x + w > 24 || item.type == 'row' || acc.lastRow;
      local x = if wrap then 0 else acc.x;
      local y = if wrap then acc.y + acc.h else acc.y;
      local h = if item.type == 'row' then 1 else 8;
      {
        panels: acc.panels + [std.mergePatch(item, { w: null }) {
          id: std.length(acc.panels) + 1,
          gridPos: { x: x, y: y, w: w, h: h },
        }],
        x: x + w,
        y: y,
        h: if wrap then h else std.max(acc.h, h),
        lastRow: item.type == 'row',
      },
    items,
    { panels: [], x: 0, y: 0, h: 0, lastRow: false },
  ).panels,

  local rate(metric, extra='') =
    'sum by (instance, netns) (rate(%s{%s%s}[$__rate_interval]))' % [metric, nsSel, extra],

  local panels = [
    row('SYNPROXY: kernel counters per namespace'),
    timeseries(
      'SYNs answered with a cookie',
      'Rate of SYNs SYNPROXY answered with a cookie SYN/ACK (syn_received), per namespace. The dashed line is the SynproxySynFlood threshold.',
      'pps',
      [[rate('synproxy_syn_received_total'), '{{instance}} {{netns}}']],
      [[c.synFloodRate, 'red']],
    ),
    timeseries(
      'Cookie ACKs: valid and invalid',
      'ACKs that carried a valid cookie (a handshake SYNPROXY completed) and ACKs whose cookie did not check out.',
      'pps',
      [
        [rate('synproxy_cookie_valid_total'), 'valid {{instance}} {{netns}}'],
        [rate('synproxy_cookie_invalid_total'), 'invalid {{instance}} {{netns}}'],
      ],
    ),
    row('SYNPROXY health'),
    timeseries(
      'Invalid cookie ratio',
      'Share of the checked ACKs with an invalid cookie. The dashed line is the SynproxyInvalidCookieRatioHigh threshold; the alert also needs more than %s invalid ACKs per second.' % c.invalidCookieMinRate,
      'percentunit',
      [[
        '%s\n/\n(%s + %s)' % [
          rate('synproxy_cookie_invalid_total'),
          rate('synproxy_cookie_invalid_total'),
          rate('synproxy_cookie_valid_total'),
        ],
        '{{instance}} {{netns}}',
      ]],
      [[c.invalidCookieRatio, 'red']],
    ),
    timeseries(
      'Retransmits and reopened connections',
      'Cookie SYN/ACK retransmits (cookie_retrans: the client resent its ACK before the server answered) and connections reopened on a port still in TIME_WAIT (conn_reopened).',
      'pps',
      [
        [rate('synproxy_cookie_retrans_total'), 'retrans {{instance}} {{netns}}'],
        [rate('synproxy_conn_reopened_total'), 'reopened {{instance}} {{netns}}'],
      ],
    ),
    row('eBPF: per-event counts (needs eBPF)'),
    timeseries(
      'SYNs and invalid cookies by address family',
      'The eBPF per-event counts split by family. Empty when the agent runs without eBPF.',
      'pps',
      [[
        'sum by (instance, netns, family, counter) (rate(synproxy_ebpf_events_total{%s, counter=~"syn_received|cookie_invalid"}[$__rate_interval]))' % nsSel,
        '{{counter}} {{family}} {{instance}} {{netns}}',
      ]],
    ),
    timeseries(
      'Peak rates within the interval',
      'Highest per-second event rate inside each sampling interval: bursts that an interval average hides.',
      'pps',
      [[
        'max by (instance, netns, counter) (synproxy_ebpf_peak_rate{%s})' % nsSel,
        '{{counter}} {{instance}} {{netns}}',
      ]],
    ),
    table(
      'Reconcile status',
      'The state of the last round per namespace (exact: the eBPF counts equal the kernel counters) and the rounds in each state over the selected range. See SynproxyEbpfReconcileNotExact in the runbooks.',
      [
        ['max by (instance, netns, status) (synproxy_ebpf_reconcile_status{%s}) == 1' % nsSel, '{{status}}'],
        ['sum by (instance, netns, status) (increase(synproxy_ebpf_reconcile_rounds_total{%s}[$__range]))' % nsSel, '{{status}}'],
      ],
    ),
    timeseries(
      'Probe misses',
      'Events the probes could not count (probe_misses, kprobe misses): any value above 0 makes counts inexact.',
      'short',
      [
        ['sum by (instance) (increase(synproxy_ebpf_probe_misses_total{%s}[$__rate_interval]))' % agentSel, 'probe misses {{instance}}'],
        ['sum by (instance, probe) (increase(synproxy_ebpf_kprobe_missed_total{%s}[$__rate_interval]))' % agentSel, 'kprobe missed {{probe}} {{instance}}'],
      ],
    ),
    row('Top sources (needs eBPF)'),
    table(
      'Top sources of the last round',
      'The sources with the most events in the last sampling round (the agent keeps its --top N per namespace, family and counter). Needs the agent started with --prometheus-top-sources prefix|address (the default, off, exports no per-source series); with prefix each source is a /24 or /64.',
      [[
        'topk(20, sum by (instance, netns, family, counter, source) (synproxy_top_source_events{%s}))' % nsSel,
        '{{source}}',
      ]],
    ) { w: 24 },
    row('Agent'),
    stat(
      'Up',
      'Whether Prometheus scrapes the agent (SynproxyAgentAbsent).',
      'none',
      [['up{%s}' % agentSel, '{{instance}}']],
    ) {
      w: 6,
      fieldConfig+: { defaults+: {
        thresholds: { mode: 'absolute', steps: [{ color: 'red', value: null }, { color: 'green', value: 1 }] },
        mappings: [{ type: 'value', options: {
          '0': { text: 'down', color: 'red' },
          '1': { text: 'up', color: 'green' },
        } }],
      } },
    },
    stat(
      'Seconds since the last round',
      'Age of the last completed sampling round (SynproxyAgentNotSampling above %s s).' % c.notSamplingSecs,
      's',
      [['time() - synproxy_agent_last_round_timestamp_seconds{%s}' % agentSel, '{{instance}}']],
      [[c.notSamplingSecs, 'red']],
    ) { w: 6 },
    stat(
      'eBPF loaded and attached',
      'synproxy_agent_ebpf_enabled (programs loaded) and synproxy_agent_ebpf_attached (probes attached): 0 means /proc counters only.',
      'none',
      [
        ['synproxy_agent_ebpf_enabled{%s}' % agentSel, 'enabled {{instance}}'],
        ['synproxy_agent_ebpf_attached{%s}' % agentSel, 'attached {{instance}}'],
      ],
    ) { w: 6 },
    table(
      'Version',
      'The agent version per instance.',
      [['synproxy_agent_build_info{%s}' % agentSel, '{{version}}']],
    ) { w: 6 },
    timeseries(
      'Round duration',
      'How long each sampling round took.',
      's',
      [['synproxy_agent_last_round_duration_seconds{%s}' % agentSel, '{{instance}}']],
    ),
    timeseries(
      'Namespaces by state',
      'Namespaces read in the last round, kept while not found (retained), or failing.',
      'short',
      [['sum by (instance, state) (synproxy_agent_namespaces{%s})' % agentSel, '{{state}} {{instance}}']],
    ),
  ],

  local variable(name, label, metric, sel) = {
    name: name,
    label: label,
    type: 'query',
    datasource: ds,
    query: { query: 'label_values(%s{%s}, %s)' % [metric, sel, name], refId: 'PrometheusVariableQueryEditor-VariableQuery' },
    refresh: 2,
    sort: 1,
    multi: true,
    includeAll: true,
    allValue: '.+',
    current: { selected: true, text: ['All'], value: ['$__all'] },
    hide: 0,
  },

  grafanaDashboards+:: {
    'synproxy-agent.json': {
      uid: c.dashboardUid,
      title: c.dashboardTitle,
      description: 'SYNPROXY counters, eBPF per-event counts, top sources and agent health from synproxy-agent.',
      tags: ['synproxy', 'synproxy-agent'],
      editable: true,
      graphTooltip: 1,
      schemaVersion: 39,
      refresh: '30s',
      time: { from: 'now-1h', to: 'now' },
      timezone: 'browser',
      annotations: { list: [] },
      links: [],
      templating: {
        list: [
          {
            name: 'datasource',
            label: 'Data source',
            type: 'datasource',
            query: 'prometheus',
            hide: 0,
            refresh: 1,
            regex: '',
          },
          variable('job', 'Job', 'synproxy_agent_build_info', '') { multi: false, includeAll: false, current:: null },
          variable('instance', 'Instance', 'synproxy_agent_build_info', 'job=~"$job"'),
          variable('netns', 'Namespace', 'synproxy_syn_received_total', agentSel),
        ],
      },
      panels: layout(panels),
    },
  },
}

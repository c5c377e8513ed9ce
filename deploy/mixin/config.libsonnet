// Settings shared by the alerts and the dashboard. Override them in your own
// jsonnet (`(import 'mixin.libsonnet') + { _config+:: { ... } }`) or change
// them here and regenerate (see generate.jsonnet).
{
  _config+:: {
    // The scrape job of the agent: the absence alert needs a fixed name.
    jobName: 'synproxy-agent',
    // Where each alert's runbook_url points (the anchor is the alert's name
    // in lower case): docs/runbooks.md of the source tree. Set it to the
    // address where your team reads that file (a wiki, a git forge).
    runbookBase: 'docs/runbooks.md',

    // SynproxySynFlood: cookie SYN/ACKs per second, and the share of them
    // that must come back as valid ACKs.
    synFloodRate: 1000,
    synFloodValidShare: 0.5,
    synFloodFor: '2m',
    // SynproxyInvalidCookieRatioHigh: invalid share of the checked ACKs, at
    // more than invalidCookieMinRate invalid ACKs per second.
    invalidCookieRatio: 0.5,
    invalidCookieMinRate: 10,
    invalidCookieFor: '5m',
    reconcileFor: '10m',
    absentFor: '5m',
    // SynproxyAgentNotSampling: seconds since the agent's last round.
    notSamplingSecs: 300,
    notSamplingFor: '5m',

    dashboardUid: 'synproxy-agent',
    dashboardTitle: 'SYNPROXY (synproxy-agent)',
  },
}

// Writes the generated files; run from the repository root:
//   jsonnet -S -m . deploy/mixin/generate.jsonnet
// The test suite regenerates them and fails when the committed ones differ.
local mixin = import 'mixin.libsonnet';
local header = |||
  # Generated from deploy/mixin (jsonnet -S -m . deploy/mixin/generate.jsonnet):
  # edit the mixin, not this file. Load with `rule_files:` in prometheus.yml;
  # the scrape job is assumed to be named `%s`. Thresholds are starting points
  # (deploy/mixin/config.libsonnet): tune them to the protected services.
  # Runbooks: docs/runbooks.md. Unit tests: synproxy-alerts.test.yml.
||| % mixin._config.jobName;
{
  'deploy/prometheus/synproxy-alerts.yml':
    header + std.manifestYamlDoc(mixin.prometheusAlerts, true, false) + '\n',
} + {
  ['deploy/grafana/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ') + '\n'
  for name in std.objectFields(mixin.grafanaDashboards)
}

// synproxy-agent mixin: the alerting rules and the Grafana dashboard from one
// source, with shared thresholds (config.libsonnet).
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboard.libsonnet')

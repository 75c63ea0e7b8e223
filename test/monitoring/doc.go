// Package monitoring tests what the chart and kustomize ship for monitoring: the alert rules
// under `promtool test rules` (promtool built from the Prometheus module by
// hack/build-promtool.sh), their runbook links into docs/operator.md, and that every alert
// and dashboard query names a metric the binaries really export, read from their /metrics.
package monitoring

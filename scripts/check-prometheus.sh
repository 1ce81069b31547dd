#!/usr/bin/env bash
# Checks the Prometheus files under docs/prometheus/: the scrape config (which loads
# rules.yml relative to itself), the alerting rules, their unit tests, and that the
# Grafana dashboard is valid JSON. Needs promtool (Debian's prometheus package) and jq.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"

dir=docs/prometheus
command -v promtool >/dev/null \
  || die "promtool not found: install Debian's prometheus package (scripts/ci-deps.sh does)"
command -v jq >/dev/null || die "jq not found: it checks $dir/grafana-dashboard.json"

log "promtool check config $dir/prometheus.yml"
promtool check config "$dir/prometheus.yml" >&2 \
  || die "$dir/prometheus.yml (or the rules it loads) is invalid: see promtool's output above"

log "promtool check rules $dir/rules.yml"
promtool check rules "$dir/rules.yml" >&2 \
  || die "$dir/rules.yml is invalid: see promtool's output above"

log "promtool test rules $dir/rules_test.yml"
promtool test rules "$dir/rules_test.yml" >&2 \
  || die "the alerting rules' unit tests failed: see promtool's output above"

log "jq empty $dir/grafana-dashboard.json"
jq empty "$dir/grafana-dashboard.json" \
  || die "$dir/grafana-dashboard.json is not valid JSON"

rules=$(grep -c '^ *- alert:' "$dir/rules.yml")
tests=$(grep -c '^ *- interval:' "$dir/rules_test.yml")
echo "prometheus: config, $rules alerting rules, $tests rule test cases and the dashboard are valid"

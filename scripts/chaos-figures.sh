#!/usr/bin/env bash
# Runs the shipped etcd drills once each, with the controller and under --baseline (the
# controller only observing, the engine's restart policy on), and prints their TTD and TTR
# percentiles and lost writes side by side: the figures docs/chaos.md reports.
#
#   scripts/chaos-figures.sh [DRILL...]
#
#   DRILL  drill files to run (default: every chaos/etcd/*.yaml but fill-member-volume,
#          whose volume is a folder on the host's disk: it would fill this machine's disk)
#
# Creates the example clusters (manifests/examples/etcd.yaml on loopback ports 23791-23803
# and 19090, manifests/examples/etcd-net/etcd-net.yaml on its internal network) and removes
# them with their volumes at the end; example containers already there are used as they are
# and left in place. Uses a database of its own;
# the reports stay in the folder it prints. Needs a Docker engine, the local images
# (scripts/setup.sh) and root (freeze and network faults go through /proc and nsenter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -gt 0 ]]; then
  drills=("$@")
else
  drills=()
  for d in chaos/etcd/*.yaml; do
    [[ $d == */fill-member-volume.yaml ]] || drills+=("$d")
  done
fi

# OPERATOR=path/to/operator uses that binary instead of building one.
if [[ -z ${OPERATOR:-} ]]; then
  cargo build --quiet
fi
bin=${OPERATOR:-target/debug/operator}
work=$(mktemp -d /tmp/operator-chaos-figures.XXXXXX)
# Example clusters that were here before are a user's: used as they are, never removed.
existing=$(docker ps -a --format '{{.Names}}' | grep -xE 'etcd[0-2]|etcd-prometheus|etcd-net[0-2]' || true)
if [[ -n $existing ]]; then
  echo "using the example containers already here (left in place afterwards): $(echo $existing)" >&2
fi
cleanup() {
  [[ -z $existing ]] || return 0
  for c in etcd0 etcd1 etcd2 etcd-prometheus etcd-net0 etcd-net1 etcd-net2; do
    docker rm -f "$c" >/dev/null 2>&1 || true
  done
  docker volume ls -q | grep -E '^etcd(-net)?[0-9]-data$|^etcd-prometheus-data$' | xargs -r docker volume rm >/dev/null 2>&1 || true
  docker network rm etcd-net >/dev/null 2>&1 || true
}
trap cleanup EXIT

printf '%-20s %-10s %-7s %-22s %-22s %s\n' DRILL SIDE PASSED 'TTD p50/p95/max' 'TTR p50/p95/max' 'LOST/ACKED'
for drill in "${drills[@]}"; do
  name=$(basename "$drill" .yaml)
  report="$work/$name"
  # A database per drill: each starts with fresh restart budgets (one drill's repairs of a
  # member would otherwise count against the next one's, and the controller would rightly
  # escalate instead of repairing).
  mkdir -p "$report"
  "$bin" chaos run "$drill" --baseline --db "$report/tickets.db" --report "$report" >"$work/$name.out" 2>"$work/$name.err" || true
  if [[ ! -f $report/journal.json ]]; then
    echo "$name: no journal (see $work/$name.err)"
    continue
  fi
  "$bin" chaos report "$report" --json >"$work/$name.summary.json"
  jq -r --arg name "$name" --slurpfile j "$report/journal.json" '
    def ms: if . == null then "n/a" else ((. / 10 | round) / 100 | tostring) + "s" end;
    .remediations[] as $r
    | ($j[0].trials | map(select(.remediation == $r.remediation))) as $t
    | [$name, $r.remediation,
       "\($r.passed)/\($r.trials)",
       "\($r.ttd.p50_ms | ms)/\($r.ttd.p95_ms | ms)/\($r.ttd.max_ms | ms)",
       "\($r.ttr.p50_ms | ms)/\($r.ttr.p95_ms | ms)/\($r.ttr.max_ms | ms)",
       "\([$t[].workload.lost // 0] | add)/\([$t[].workload.acknowledged // 0] | add)"]
    | @tsv' "$work/$name.summary.json" | awk -F'\t' '{printf "%-20s %-10s %-7s %-22s %-22s %s\n", $1, $2, $3, $4, $5, $6}'
done
echo "reports: $work"

#!/usr/bin/env bash
# Rolling rollout figures (issue 11): the etcd example's three members get a changed spec, once
# with their quorum group (the gate on: one member at a time) and once with the group removed
# (the gate off: all three at once). For each rollout: the time from the edit until every member
# runs the new spec and answers /health, and the fraction of /health samples (every 50 ms, all
# three members probed at once) in which at least two members answered healthy (a quorum).
#
#   scripts/rollout-figures.sh [ROUNDS]      # default 3 rounds of each; prints medians
#
# Needs what scripts/setup.sh installs, python3, and the example's names free: it refuses to
# run while containers etcd0..etcd2 / etcd-prometheus or their volumes exist. It removes exactly
# those at the end. OPERATOR=path/to/operator picks the binary (default target/debug/operator).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OPERATOR=${OPERATOR:-target/debug/operator}
NAMES=(etcd0 etcd1 etcd2 etcd-prometheus)
VOLUMES=(etcd0-data etcd1-data etcd2-data etcd-prometheus-data)
PORTS=(23791 23792 23793)

for n in "${NAMES[@]}"; do
  if docker inspect "$n" >/dev/null 2>&1; then
    echo "rollout-figures: container $n exists; not touching it (remove it first)" >&2
    exit 1
  fi
done
for v in "${VOLUMES[@]}"; do
  if docker volume inspect "$v" >/dev/null 2>&1; then
    echo "rollout-figures: volume $v exists; not touching it (remove it first)" >&2
    exit 1
  fi
done
[ -x "$OPERATOR" ] || { echo "rollout-figures: no $OPERATOR (cargo build first)" >&2; exit 1; }

work=$(mktemp -d)
op_pid=
cleanup() {
  [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null && wait "$op_pid" 2>/dev/null || true
  docker rm -f "${NAMES[@]}" >/dev/null 2>&1 || true
  docker volume rm "${VOLUMES[@]}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Samples every member's /health until the file $1 exists; prints "samples with-quorum min".
sampler() {
  python3 - "$1" "${PORTS[@]}" <<'EOF'
import json, os, sys, threading, time, urllib.request
stop, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.3) as r:
            return json.load(r).get("health") == "true"
    except Exception:
        return False
counts = []
while not os.path.exists(stop):
    res = [False] * len(ports)
    ts = [threading.Thread(target=lambda i=i: res.__setitem__(i, healthy(ports[i]))) for i in range(len(ports))]
    [t.start() for t in ts]; [t.join() for t in ts]
    counts.append(sum(res))
    time.sleep(0.05)
print(len(counts), sum(1 for c in counts if c >= 2), min(counts) if counts else 0)
EOF
}

all_healthy() {
  for p in "${PORTS[@]}"; do
    curl -sf -m 1 "http://127.0.0.1:$p/health" | grep -q '"health":"true"' || return 1
  done
}

hash_of() { docker inspect -f '{{index .Config.Labels "operator.spec-hash"}}' "$1" 2>/dev/null || true; }

wait_for() { # seconds, command...
  local until=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.1
  done
}

run_variant() { # gate on|off, round
  local gate=$1 round=$2 dir="$work/$1-$2"
  mkdir -p "$dir"
  cp -r manifests/examples/etcd "$dir/"
  if [ "$gate" = on ]; then
    cp manifests/examples/etcd.yaml "$dir/etcd.yaml"
  else
    sed '/^  groups:/,$d' manifests/examples/etcd.yaml > "$dir/etcd.yaml"
  fi
  "$OPERATOR" run "$dir" --db "$dir/tickets.db" --listen 127.0.0.1:0 > "$dir/operator.log" 2>&1 &
  op_pid=$!
  wait_for 120 all_healthy || { echo "members never healthy; see $dir/operator.log" >&2; exit 1; }
  sleep 3
  local before=()
  for m in etcd0 etcd1 etcd2; do before+=("$(hash_of "$m")"); done
  rolled() {
    local i=0
    for m in etcd0 etcd1 etcd2; do
      [ "$(hash_of "$m")" != "${before[$i]}" ] || return 1
      i=$((i + 1))
    done
    all_healthy
  }
  rm -f "$dir/stop"
  sampler "$dir/stop" > "$dir/samples" &
  local sampler_pid=$!
  sleep 1
  local start=$(date +%s.%N)
  sed -i "s|        - --initial-cluster-token=operator-example|&\n        - --heartbeat-interval=1$round$round|" "$dir/etcd.yaml"
  wait_for 180 rolled || { echo "rollout did not finish; see $dir/operator.log" >&2; exit 1; }
  local end=$(date +%s.%N)
  sleep 1
  touch "$dir/stop"; wait "$sampler_pid"
  read -r samples quorum min < "$dir/samples"
  printf '%s %s %.2f %s %s %s\n' "$gate" "$round" "$(python3 -c "print($end - $start)")" "$samples" "$quorum" "$min" >> "$work/results"
  kill "$op_pid"; wait "$op_pid" 2>/dev/null || true; op_pid=
  docker rm -f "${NAMES[@]}" >/dev/null 2>&1 || true
  docker volume rm "${VOLUMES[@]}" >/dev/null 2>&1 || true
}

for round in $(seq 1 "$ROUNDS"); do
  run_variant on "$round"
  run_variant off "$round"
done

echo "gate round seconds samples with_quorum min_healthy"
cat "$work/results"
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for gate in ("on", "off"):
    r = [x for x in rows if x[0] == gate]
    secs = [float(x[2]) for x in r]
    frac = [int(x[4]) / int(x[3]) for x in r]
    mins = [int(x[5]) for x in r]
    print(f"gate {gate:3}: rollout p50 {statistics.median(secs):.1f} s (min {min(secs):.1f}, max {max(secs):.1f}); "
          f"samples with a quorum p50 {statistics.median(frac):.3f} (worst {min(frac):.3f}); fewest healthy {min(mins)} of 3")
EOF

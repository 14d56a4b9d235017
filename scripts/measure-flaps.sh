#!/usr/bin/env bash
# Counts ticket flaps of a crash-looping service: the controller of an earlier revision and
# of the working tree, each run for the same time against the same manifest, one after the
# other on the same engine.
#
#   scripts/measure-flaps.sh REV [SECONDS]
#
#   REV      a git revision to compare against (e.g. 0748e86~1, before repairs had to settle)
#   SECONDS  how long each controller runs (default 60)
#
# The service runs half a second and exits 1, forever; its budget is large enough never to
# escalate within the run. Printed per side: tickets, flaps (reopenings), resolutions counted
# by operator_tickets_resolved_total, and restarts made. Needs a Docker engine and the local
# images (scripts/setup.sh). Removes exactly the containers and networks it created.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $# -ge 1 ]] || { sed -n '2,14p' "$0"; exit 2; }
base_rev=$1 seconds=${2:-60}
base_sha=$(git rev-parse --verify "$base_rev^{commit}") || { echo "no revision $base_rev" >&2; exit 2; }

work=$(mktemp -d /tmp/operator-flaps.XXXXXX)
worktree="$work/base"
cluster="flaps-$$"
cleanup() {
  [[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  docker ps -aq --filter "label=operator.cluster=$cluster" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=operator.cluster=$cluster" | xargs -r docker network rm >/dev/null
  git worktree remove --force "$worktree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach "$worktree" "$base_sha" >/dev/null

base_target=${BENCH_COMPARE_BASE_TARGET:-/tmp/operator-bench-base-target}
echo "building $base_rev ($base_sha) and the working tree (release)" >&2
(cd "$worktree" && CARGO_TARGET_DIR="$base_target" cargo build --release --quiet)
cargo build --release --quiet
new_target=${CARGO_TARGET_DIR:-target}

mkdir -p "$work/manifests"
cat >"$work/manifests/flaps.yaml" <<EOF
apiVersion: operator/v1
kind: Cluster
metadata:
  name: $cluster
spec:
  services:
    - name: $cluster-loop
      image: operator-local/busybox:latest
      command: ["sh", "-c", "sleep 0.5; exit 1"]
      remediation:
        maxRestarts: 100000
        window: 10m
        backoff: {initial: 100ms, max: 1s}
EOF

measure() {
  local label=$1 bin=$2 db="$work/$1.db" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" run "$work/manifests" --db "$db" --listen "127.0.0.1:$port" >"$work/$label.log" 2>&1 &
  pid=$!
  sleep "$seconds"
  local resolved restarts
  resolved=$(curl -s "http://127.0.0.1:$port/metrics" |
    awk '/^operator_tickets_resolved_total/ {n += $2} END {print n + 0}')
  restarts=$(curl -s "http://127.0.0.1:$port/metrics" |
    awk '/^operator_actions_total\{kind="start",result="ok"\}/ {print $2 + 0}')
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  "$bin" tickets list --db "$db" --json |
    python3 -c "import json,sys; t=json.load(sys.stdin); print('$label: %d s, %d tickets, %d flaps, %s resolutions, %s restarts' % ($seconds, len(t), sum(x['flaps'] for x in t), '$resolved', '${restarts:-0}'))"
  docker ps -aq --filter "label=operator.cluster=$cluster" | xargs -r docker rm -f >/dev/null
}

measure base "$base_target/release/operator"
measure new "$new_target/release/operator"

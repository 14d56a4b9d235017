#!/usr/bin/env bash
# Runs a benchmark of an earlier revision and of the working tree side by side, in one run,
# alternating, so both see the same machine (these machines are noisy: compare medians and
# ratios, never absolute times from different runs).
#
#   scripts/bench-compare.sh REV BENCH [REPEATS] [-- BENCH_ARGS...]
#
#   REV      a git revision to compare against (e.g. main~1, a commit id)
#   BENCH    recovery | tickets | checks | mass_repair (see benches/)
#   REPEATS  how many times each side runs (default 2: base, new, base, new)
#
# Needs what the bench needs (a Docker engine and the local images: scripts/setup.sh). REV is
# checked out in a temporary worktree (removed at the end) and built in its own target folder,
# kept between runs so a second comparison only rebuilds the crate
# (BENCH_COMPARE_BASE_TARGET, default /tmp/operator-bench-base-target). The working tree builds
# in CARGO_TARGET_DIR (default ./target). Output: each run's figures, labelled base or new.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,13p' "$0"; exit 2; }
[[ $# -ge 2 ]] || usage
base_rev=$1 bench=$2
shift 2
repeats=2
if [[ $# -gt 0 && $1 != -- ]]; then repeats=$1; shift; fi
[[ ${1:-} == -- ]] && shift
bench_args=("$@")

base_sha=$(git rev-parse --verify "$base_rev^{commit}") || { echo "no revision $base_rev" >&2; exit 2; }
worktree=$(mktemp -d /tmp/operator-bench-base.XXXXXX)
cleanup() { git worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"; }
trap cleanup EXIT
git worktree add --detach "$worktree" "$base_sha" >/dev/null

# The bench binary cargo built, from its "Executable" line.
build() {
  local dir=$1 target=$2
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench --bench "$bench" --no-run 2>&1) |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1 |
    { read -r exe; [[ $exe = /* ]] || exe="$target/${exe#target/}"; echo "$exe"; }
}
echo "[bench-compare] building $bench at $base_rev ($base_sha) and in the working tree" >&2
base_exe=$(build "$worktree" "${BENCH_COMPARE_BASE_TARGET:-/tmp/operator-bench-base-target}")
new_exe=$(build "$PWD" "${CARGO_TARGET_DIR:-$PWD/target}")
[[ -x $base_exe && -x $new_exe ]] || { echo "could not build both benches" >&2; exit 1; }

for ((i = 1; i <= repeats; i++)); do
  for side in base new; do
    exe=$base_exe
    [[ $side == new ]] && exe=$new_exe
    echo "===== $side ($i/$repeats): $bench ${bench_args[*]:-}"
    "$exe" "${bench_args[@]}"
  done
done

#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run).
#
#   scripts/setup.sh                       packages, dockerd, local images
#   cargo fmt --check
#   cargo clippy --all-targets -- -D warnings
#   cargo test [ARGS...]                   extra arguments are passed to cargo test
#   scripts/teardown.sh                    always, on exit: stops what setup.sh started
#
# Exits with the status of the first step that fails (cargo's status for the cargo steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Identifies this run, so teardown stops only an engine that this run's setup started.
OPERATOR_CI_RUN_ID="${OPERATOR_CI_RUN_ID:-test-$$-$(date +%s)}"
export OPERATOR_CI_RUN_ID
# Tests that need Docker fail loudly instead of skipping when no engine answers.
export OPERATOR_TEST_REQUIRE_DOCKER=1

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  echo "[test] teardown" >&2
  scripts/teardown.sh || echo "[test] WARNING: teardown failed" >&2
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$(date +%s)
step() { echo "[test] \$ $*  (t+$(($(date +%s) - started)) s)" >&2; }

step scripts/setup.sh
scripts/setup.sh

step cargo fmt --check
cargo fmt --check

step cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets -- -D warnings

step cargo test "$@"
rc=0
cargo test "$@" || rc=$?
echo "[test] cargo test exited with $rc after $(($(date +%s) - started)) s" >&2
exit "$rc"

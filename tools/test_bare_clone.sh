#!/usr/bin/env bash
# Proves that the README's test command passes in a plain clone with nothing beside it: clones
# this repository's committed HEAD into an empty temporary folder (no ../shared there) and runs
# the exact command from the README's first lines.
#
#     bash tools/test_bare_clone.sh            # ~6 min on 2 cores (a fresh build)
#     KEEP=1 bash tools/test_bare_clone.sh     # keep the folder for a look afterwards
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cmd="$(sed -n '/^```/,/^```/p' "$repo/README.md" | sed -n 3p)"
case "$cmd" in
  "cargo test"*) ;;
  *) echo "README's second command is not a cargo test command: '$cmd'" >&2; exit 1 ;;
esac
tmp="$(mktemp -d)"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/gramrr"
cd "$tmp/gramrr"
if [ -e ../shared ]; then echo "unexpected ../shared beside the clone" >&2; exit 1; fi
echo "bare clone at $tmp/gramrr (HEAD $(git rev-parse --short HEAD)); running: $cmd"
# A separate target folder: nothing from the developer's build is reused.
set +e
env -u GRAMRR_BENCHDATA -u GRAMRR_METHOD_MD $cmd >"$tmp/test.log" 2>&1
status=$?
set -e
grep -E '^test result|^skipped|FAILED|panicked' "$tmp/test.log" || true
failed="$(grep -c '^test result: FAILED' "$tmp/test.log" || true)"
passed="$(grep -oE '^test result: ok\. [0-9]+ passed' "$tmp/test.log" | awk '{s+=$4} END {print s+0}')"
echo "bare clone: exit $status, $passed tests passed, $failed suites failed (log: $tmp/test.log)"
exit "$status"

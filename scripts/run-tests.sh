#!/usr/bin/env bash
# Runs Sluice's C test binaries and prints one summary line.
# Usage: run-tests.sh [--unit|--integ] BUILD_DIR BIN_DIR [BUILD_DIR BIN_DIR ...]
# Each pair is a build variant: its tests run against its own binaries.
set -uo pipefail
cd "$(dirname "$0")/.."

filter=all
case "${1:-}" in --unit) filter=unit; shift ;; --integ) filter=integ; shift ;; esac

passed=0; failed=0; bad=()
# What each failing binary said about its failures, repeated at the end so
# that a log cut to its tail (CI keeps only the last lines) still names them.
why=$(mktemp); trap 'rm -f "$why"' EXIT
run_one() { # variant test bin
    local name out rc checks fails errs
    name="$1/$(basename "$2")"
    echo "=== $name"
    out=$(SLUICE_BIN_DIR="$3" CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-300} "$2" 2>&1)
    rc=$?
    echo "$out" | tail -n 40
    # Check prints "NN%: Checks: N, Failures: F, Errors: E".
    line=$(echo "$out" | grep -E '^[0-9]+%: Checks: [0-9]+' | tail -1)
    if [ -n "$line" ]; then
        checks=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
        fails=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
        errs=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
        passed=$((passed + checks - fails - errs))
        failed=$((failed + fails + errs))
        if [ "$rc" -ne 0 ] && [ $((fails + errs)) -eq 0 ]; then failed=$((failed + 1)); fi
    else
        failed=$((failed + 1))
    fi
    if [ "$rc" -ne 0 ]; then
        bad+=("$name")
        {
            echo "--- $name (exit $rc)"
            # Check's failure lines are file:line:F|E:tcase:test:iter: message.
            echo "$out" | grep -E ':[0-9]+:[FE]:|FAIL|Assertion|ERROR: AddressSanitizer|runtime error' | head -n 20
        } >>"$why"
    fi
}

while [ $# -ge 2 ]; do
    build=$1; bin=$2; shift 2
    variant=$(basename "$build")
    if [ "$filter" != integ ]; then
        for t in "$build"/tests/check_*; do [ -x "$t" ] && run_one "$variant" "$t" "$bin"; done
    fi
    if [ "$filter" != unit ]; then
        for t in "$build"/tests/test_*; do [ -x "$t" ] && run_one "$variant" "$t" "$bin"; done
    fi
done

echo
if [ ${#bad[@]} -gt 0 ]; then
    cat "$why"
    echo "failing: ${bad[*]}"
fi
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#bad[@]} -eq 0 ]

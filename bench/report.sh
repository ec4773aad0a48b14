#!/usr/bin/env bash
# bench/report.sh RESULT.json [BENCHMARKS.md]: renders RESULT.json as
# Markdown (bench/report.jq) and puts it between the generated-block markers
# of BENCHMARKS.md, leaving the hand-written text around them alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
json=${1:?usage: report.sh RESULT.json [BENCHMARKS.md]}
md=${2:-$here/../BENCHMARKS.md}
ts=$(jq -r .timestamp "$json")
suite=$(jq -r .suite "$json")
# One generated block per suite, so the 60k run does not replace the short one.
begin="<!-- BEGIN GENERATED (suite $suite) by bench/report.sh: edits inside are overwritten -->"
end="<!-- END GENERATED (suite $suite) -->"
charts=$(cd "$(dirname "$json")" && { ls "$ts"-*.png 2>/dev/null || true; } | sed "s/^$ts-//; s/\.png$//" | jq -R . | jq -sc .)
block=$(jq -r --argjson charts "$charts" -f "$here/report.jq" "$json")

if [ ! -f "$md" ] || ! grep -qF "$begin" "$md"; then
    {
        [ -f "$md" ] && cat "$md" || printf '# Benchmarks\n'
        printf '\n%s\n%s\n' "$begin" "$end"
    } >"$md.tmp"
    mv "$md.tmp" "$md"
fi

# Replace the block between the markers (the block goes through a file: awk
# -v would mangle backslashes).
printf '%s\n' "$block" >"$md.block"
awk -v b="$begin" -v e="$end" -v f="$md.block" '
    $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }
' "$md" >"$md.tmp"
rm -f "$md.block"
mv "$md.tmp" "$md"

#!/usr/bin/env bash
# bench/plot.sh RESULT.json: PNG charts (gnuplot) beside the result file:
#   <ts>-fanout-<N>x<P>-latency.png  fan-out latency percentiles per system (log scale)
#   <ts>-fanout-throughput.png       deliveries/s and server CPU-s per million, per shape
#   <ts>-idle.png                    server RSS per idle connection and connect rate
#   <ts>-pipeline.png                Sluice pipeline: latency percentiles vs offered rate
set -euo pipefail

json=${1:?usage: plot.sh RESULT.json}
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot missing (bench/peers/install.sh)" >&2; exit 1; }
dir=$(dirname "$json")
ts=$(jq -r .timestamp "$json")
tmp=$(mktemp -d /tmp/sluice-plot.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Sluice first, then the peers, always in this order.
order='["sluice","nats","nchan","socketio"]'

# One latency chart per fan-out shape (members x publishes/s).
keys=$(jq -r '[.runs[] | select(.scenario == "fanout" and (.error | not))
              | "\(.subscribers)x\(.rate_offered)"] | unique | .[]' "$json")
for k in $keys; do
    jq -r --arg k "$k" --argjson order "$order" '
        [.runs[] | select(.scenario == "fanout" and (.error | not)
                          and "\(.subscribers)x\(.rate_offered)" == $k)]
        | sort_by(.system as $s | $order | index($s)) | .[]
        | [.system, .latency.p50_us/1000, .latency.p90_us/1000, .latency.p99_us/1000,
           .latency.p999_us/1000, .latency.max_us/1000] | map(tostring) | join(" ")' \
        "$json" >"$tmp/lat-$k.dat"
done

# Rows are shapes, columns are systems (0 where a system has no run).
matrix() { # matrix JQ_FIELD
    jq -r --argjson order "$order" '
        [.runs[] | select(.scenario == "fanout" and (.error | not))] as $f
        | ($f | map("\(.subscribers)x\(.rate_offered)") | unique) as $keys
        | ("shape " + ($order | join(" "))),
          ($keys[] as $k
           | [$k] + ($order | map(. as $s
               | ($f | map(select(.system == $s and "\(.subscribers)x\(.rate_offered)" == $k)) | first)
               | if . == null then 0 else ('"$1"') end))
           | map(tostring) | join(" "))' "$json"
}
matrix '.deliveries_per_s' >"$tmp/fan.dat"
matrix '.cpu_s_per_million // 0' >"$tmp/cpu.dat"

jq -r --argjson order "$order" '
    [.runs[] | select(.scenario == "idle" and (.error | not))]
    | sort_by(.system as $s | $order | index($s)) | .[]
    | [.system, (.rss_per_conn_bytes // 0) / 1024, (.connect_rate // 0)]
    | map(tostring) | join(" ")' "$json" >"$tmp/idle.dat"

jq -r '.runs[] | select(.scenario == "pipeline" and (.error | not)) | .steps[]
       | [.rate_offered, .result.reply_latency.p50_us/1000, .result.reply_latency.p99_us/1000,
          .result.reply_latency.p999_us/1000, .result.ttft.p99_us/1000, .result.replies_per_s]
       | map(tostring) | join(" ")' "$json" >"$tmp/pipe.dat"

common='set terminal pngcairo size 900,520 font "sans,10"
set grid ytics
set key top left
set style fill solid 0.85 border -1
set boxwidth 0.9'

for k in $keys; do
    [ -s "$tmp/lat-$k.dat" ] || continue
    gnuplot <<EOF
$common
set output "$dir/$ts-fanout-$k-latency.png"
set title "fan-out $k (members x publishes/s): publish-to-receive latency, $ts"
set ylabel "ms (log scale)"
set logscale y
set style data histograms
set style histogram clustered gap 1
plot "$tmp/lat-$k.dat" using 2:xtic(1) title "p50", '' using 3 title "p90", \
     '' using 4 title "p99", '' using 5 title "p99.9", '' using 6 title "max"
EOF
done

if [ -n "$keys" ]; then
    gnuplot <<EOF
$common
set output "$dir/$ts-fanout-throughput.png"
set multiplot layout 1,2 title "fan-out per shape, members x publishes/s, $ts"
set style data histograms
set style histogram clustered gap 1
set key autotitle columnheader
set title "deliveries/s"
plot for [c=2:5] "$tmp/fan.dat" using c:xtic(1)
set title "server CPU-s per million deliveries (Sluice: gateway)"
plot for [c=2:5] "$tmp/cpu.dat" using c:xtic(1)
unset multiplot
EOF
fi

if [ -s "$tmp/idle.dat" ]; then
    gnuplot <<EOF
$common
set output "$dir/$ts-idle.png"
set multiplot layout 1,2 title "idle connections, $ts"
set style data histograms
set style histogram clustered gap 1
set title "server RSS per connection (KiB)"
plot "$tmp/idle.dat" using 2:xtic(1) notitle
set title "connect rate (connections/s)"
plot "$tmp/idle.dat" using 3:xtic(1) notitle
unset multiplot
EOF
fi

if [ -s "$tmp/pipe.dat" ]; then
    gnuplot <<EOF
$common
set output "$dir/$ts-pipeline.png"
set title "Sluice pipeline, echo model at zero delay, $ts"
set xlabel "offered messages/s"
set ylabel "ms (log scale)"
set logscale y
set y2label "replies/s"
set y2tics
plot "$tmp/pipe.dat" using 1:2 with linespoints title "reply p50", \
     '' using 1:3 with linespoints title "reply p99", \
     '' using 1:4 with linespoints title "reply p99.9", \
     '' using 1:5 with linespoints title "first token p99", \
     '' using 1:6 axes x1y2 with linespoints dashtype 2 title "replies/s"
EOF
fi
ls "$dir/$ts"-*.png 2>/dev/null || true

// Parses PromQL expressions with the grammar Prometheus's own UI uses and
// reports syntax errors. Input on stdin: a JSON array of [where, expr].
// Grafana's $__rate_interval / $__interval / $__range become 5m first.
// Prints one line per bad expression; exits 1 if there is any.
'use strict';
const { parser } = require('@prometheus-io/lezer-promql');

const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
let bad = 0;
for (const [where, raw] of input) {
  const expr = raw.replace(/\$__(rate_interval|interval|range)/g, '5m');
  const tree = parser.parse(expr);
  let at = -1;
  tree.iterate({
    enter: (n) => {
      if (at < 0 && n.type.isError) at = n.from;
    },
  });
  if (at >= 0) {
    bad++;
    const near = expr.slice(Math.max(0, at - 20), at + 20).replace(/\s+/g, ' ');
    console.log(`  FAIL: ${where}: PromQL syntax error at ${at} (near "${near}")`);
  }
}
console.log(`  promql: ${input.length - bad} of ${input.length} expressions parse`);
process.exit(bad ? 1 : 0);

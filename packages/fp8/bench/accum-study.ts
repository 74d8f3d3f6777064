// Accumulation-precision study (DeepSeek-V3 report §3.3.2): relative error of a block-scaled FP8 GEMM
// whose inner accumulation keeps only ~14 bits (fixed-point alignment to the largest exponent,
// truncation), with and without promotion into f32 every N_C = 128 elements, against the exact f64
// product of the dequantized operands. Positive U(0,1) data, M = N = 64, K = 512 ... 16384.
//
//   npx tsx bench/accum-study.ts            (from packages/fp8; prints a markdown table)
//   options: --m 64 --n 64 --bits 14 --group 32 --data uniform|normal --kmax 16384
import { accumulationStudy } from '../src/accum-study';
import type { AccumulatorOptions } from '../src/accum';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

const m = Number(arg('m', '64'));
const n = Number(arg('n', '64'));
const bits = Number(arg('bits', '14'));
const group = Number(arg('group', '32'));
const kmax = Number(arg('kmax', '16384'));
const data = arg('data', 'uniform') as 'uniform' | 'normal';

const pct = (x: number): string => `${(x * 100).toPrecision(3)}%`;

const configs: [string, AccumulatorOptions][] = [
  ['no promotion', { mantissaBits: bits, groupSize: group }],
  ['promote every 128', { mantissaBits: bits, groupSize: group, promoteEvery: 128 }],
];

console.log(
  `M=${m} N=${n}, ${data} data, ${bits}-bit accumulator (truncating, groups of ${group} products), error vs exact f64 product of the dequantized operands`,
);
console.log('');
console.log('| K | no promotion: max rel | mean rel | promote every 128: max rel | mean rel | ratio (max) |');
console.log('|---:|---:|---:|---:|---:|---:|');
const t0 = performance.now();
for (let k = 512; k <= kmax; k *= 2) {
  const r = configs.map(([, acc]) => accumulationStudy({ m, n, k, data, seed: 1234 + k, accumulator: acc }));
  const [a, b] = r as [ReturnType<typeof accumulationStudy>, ReturnType<typeof accumulationStudy>];
  console.log(
    `| ${k} | ${pct(a.maxRelError)} | ${pct(a.meanRelError)} | ${pct(b.maxRelError)} | ${pct(b.meanRelError)} | ${(a.maxRelError / b.maxRelError).toFixed(0)}x |`,
  );
}
console.log('');
console.log(`Sensitivity of the model at K=4096 (same M, N; no promotion unless stated):`);
console.log('');
console.log('| variant | max rel | mean rel |');
console.log('|---|---:|---:|');
const variants: [string, AccumulatorOptions, 'uniform' | 'normal'][] = [
  [`${bits - 1} bits, truncate`, { mantissaBits: bits - 1, groupSize: group }, data],
  [`${bits} bits, truncate (default)`, { mantissaBits: bits, groupSize: group }, data],
  [`${bits + 1} bits, truncate`, { mantissaBits: bits + 1, groupSize: group }, data],
  [`${bits} bits, truncate, groups of 1 product`, { mantissaBits: bits, groupSize: 1 }, data],
  [`${bits} bits, round to nearest`, { mantissaBits: bits, groupSize: group, rounding: 'nearest' }, data],
  [
    `${bits} bits, truncate, N(0,1) data (rel L2 in the mean column)`,
    { mantissaBits: bits, groupSize: group },
    'normal',
  ],
];
for (const [name, acc, d] of variants) {
  const r = accumulationStudy({ m, n, k: 4096, data: d, seed: 1234 + 4096, accumulator: acc });
  console.log(
    `| ${name} | ${d === 'normal' ? 'n/a (outputs near 0)' : pct(r.maxRelError)} | ${pct(d === 'normal' ? r.relL2Error : r.meanRelError)} |`,
  );
}
console.log('');
console.log(`(${((performance.now() - t0) / 1000).toFixed(1)} s)`);

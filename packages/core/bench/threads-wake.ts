// The tiny training step's dense products on 1 thread and on 2, with the worker thread asleep (a 3 ms
// pause before each call: past gemmConfig.spinMicros, as between a step's products) and awake (the same
// call just before), alternating in one process: the forward x·Wᵀ on both routes (weightProduct, sgemm)
// and the two gradients as one sgemmMany job. Medians of ms per call; the two forward routes' bits compared.
// usage: npx tsx --conditions=@dsv3/source bench/threads-wake.ts [--reps 15]
import { parseArgs } from 'node:util';
import { setGemmThreads, sgemm, sgemmMany, weightProduct } from '../src/cpu/gemm/index.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' } } });
const reps = Number(values.reps);
/** m x n x k of x·Wᵀ: the tiny preset's dense MLP up / down, q-LoRA, and a 64-wide projection (1024 tokens). */
const shapes: [number, number, number][] = [
  [1024, 320, 128],
  [1024, 192, 96],
  [1024, 128, 320],
  [1024, 128, 64],
];
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const nap = new Int32Array(new SharedArrayBuffer(4));
for (const [m, n, k] of shapes) {
  const [w, x, g] = [randomUniform(n * k, 1), randomUniform(m * k, 2), randomUniform(m * n, 3)].map((a) =>
    Float32Array.from(a),
  ) as [Float32Array, Float32Array, Float32Array];
  const [a, b] = [new Float32Array(m * n), new Float32Array(m * n)];
  const [dx, dw] = [new Float32Array(m * k), new Float32Array(n * k)];
  const calls: [string, () => void][] = [
    ['weightProduct', () => weightProduct({ m, n, k, x, w, y: b })],
    ['sgemm', () => sgemm({ m, n, k, a: x, b: w, transB: true, c: a })],
    [
      'gradients (sgemmMany)',
      () =>
        sgemmMany([
          { m, n: k, k: n, a: g, b: w, c: dx },
          { m: n, n: k, k: m, a: g, transA: true, b: x, c: dw },
        ]),
    ],
  ];
  const modes = ['1 thread', '2 asleep', '2 awake'] as const;
  const ms = calls.map(() => modes.map((): number[] => []));
  for (let r = -3; r < reps; r++) {
    calls.forEach(([, call], c) => {
      modes.forEach((mode, i) => {
        setGemmThreads(mode === '1 thread' ? 1 : 2);
        if (mode === '2 awake') call();
        else Atomics.wait(nap, 0, 0, 3);
        const t = performance.now();
        call();
        if (r >= 0) ms[c]![i]!.push(performance.now() - t);
      });
    });
  }
  const same = a.every((v, i) => Object.is(v, b[i]));
  console.log(`${m} x ${n} x ${k} (forward routes bitwise: ${same})`);
  calls.forEach(([name], c) =>
    console.log(
      `  ${name.padEnd(22)} ${modes.map((mode, i) => `${mode} ${median(ms[c]![i]!).toFixed(3)}`).join('   ')}`,
    ),
  );
}

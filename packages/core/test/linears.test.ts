// linears(x, weights): Linears reading one input as one op. Its outputs and every gradient are bitwise
// those of the separate linear() calls (f32 on the CPU: training's 1,024-row products as one f32 GEMM
// job, the weight GEMM's and the GEMV's rows too; f64 through the per-weight fallback), and on the CPU
// the forward is one engine job where the separate calls are one each.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { gemmConfig, type TracedJob } from '../src/cpu/gemm/config.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));

const bits = (t: T.Tensor) =>
  Buffer.from(new Float64Array(Array.from(t.dataSync() as ArrayLike<number>, Number)).buffer);
const same = (a: T.Tensor, b: T.Tensor) => {
  expect(a.shape).toEqual(b.shape);
  expect(bits(a).equals(bits(b))).toBe(true);
};

/** x [rows split as shape], weights [n_i, k] as leaves, and upstream gradients r_i, from one seed. */
function problem(shape: number[], ns: number[], dtype: 'f32' | 'f64' = 'f32') {
  const rng = new Rng(11);
  const k = shape.at(-1)!;
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const leaf = (s: number[]) => {
    const v = rng.fillUniform(new Float64Array(s.reduce((a, b) => a * b, 1)), -1, 1);
    return T.tensor(v, { shape: s, dtype }).requireGrad();
  };
  const x = leaf(shape);
  const ws = ns.map((n) => leaf([n, k]));
  const rs = ns.map((n) =>
    T.tensor(rng.fillUniform(new Float64Array(rows * n), -1, 1), { shape: [...shape.slice(0, -1), n], dtype }),
  );
  return { x, ws, rs };
}

/** Outputs, then x's and the weights' gradients of Σ_i sum(y_i · r_i), by `ys`. */
function run(p: ReturnType<typeof problem>, ys: (x: T.Tensor, ws: T.Tensor[]) => T.Tensor[]) {
  // x through a product first, as an RMSNorm's output would be: a non-leaf whose gradient the two sum
  const x = p.x.mul(1.5);
  const out = ys(x, p.ws);
  out
    .map((y, i) => y.mul(p.rs[i]!).sum())
    .reduce((a, b) => a.add(b))
    .backward();
  const grads = [p.x.grad!, ...p.ws.map((w) => w.grad!)];
  return { out, grads };
}

describe('linears', () => {
  const cases: [string, number[], number[], number][] = [
    ['training rows (f32 GEMM), 3-d x', [8, 128, 128], [96, 80], 2],
    ['training rows, one thread', [1024, 128], [320, 320], 1],
    ['weight-GEMM rows', [300, 64], [48, 40, 24], 2],
    ['GEMV rows', [2, 3, 64], [32, 16], 2],
  ];
  for (const [name, shape, ns, threads] of cases)
    it(`outputs and gradients bitwise the separate linears': ${name}`, () => {
      T.setGemmThreads(threads);
      const a = run(problem(shape, ns), (x, ws) => ws.map((w) => T.linear(x, w)));
      const b = run(problem(shape, ns), (x, ws) => T.linears(x, ws));
      a.out.forEach((y, i) => same(b.out[i]!, y));
      a.grads.forEach((g, i) => same(b.grads[i]!, g));
    });

  it('f64 (no fused kernel for it): the per-weight products, same bits', () => {
    const a = run(problem([4, 16], [8, 6], 'f64'), (x, ws) => ws.map((w) => T.linear(x, w)));
    const b = run(problem([4, 16], [8, 6], 'f64'), (x, ws) => T.linears(x, ws));
    a.out.forEach((y, i) => same(b.out[i]!, y));
    a.grads.forEach((g, i) => same(b.grads[i]!, g));
  });

  it("runs the forward as one engine job on the CPU (the separate linears' one each)", () => {
    T.setGemmThreads(2);
    const p = problem([1024, 128], [96, 80]);
    const jobs = (f: () => void) => {
      const seen: TracedJob[] = [];
      gemmConfig.jobTrace = (j) => seen.push(j);
      try {
        T.noGrad(f);
      } finally {
        gemmConfig.jobTrace = null;
      }
      return seen.map((j) => j.what);
    };
    expect(jobs(() => p.ws.map((w) => T.linear(p.x, w)))).toEqual(['sgemm', 'sgemm']);
    expect(jobs(() => T.linears(p.x, p.ws))).toEqual(['sgemmMany']);
  });

  it('linearForwards: plain Linears as one op; a Linear with a bias takes its own forward', () => {
    const rng = new Rng(3);
    const x = T.tensor(rng.fillUniform(new Float32Array(6 * 16), -1, 1), { shape: [6, 16] });
    const plain = [new T.Linear(16, 8, { seed: 1 }), new T.Linear(16, 4, { seed: 2 })];
    const biased = [new T.Linear(16, 8, { seed: 1 }), new T.Linear(16, 4, { seed: 2, bias: true })];
    T.linearForwards(x, plain).forEach((y, i) => same(y, plain[i]!.forward(x)));
    T.linearForwards(x, biased).forEach((y, i) => same(y, biased[i]!.forward(x)));
  });
});

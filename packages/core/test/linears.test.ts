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

  it("each weight its own input (MLA's q_b and kv_b): outputs and gradients bitwise the separate linears'", () => {
    T.setGemmThreads(2);
    // weights: W_1 [192, 96] on x_1 [8, 128, 96], W_2 [256, 64] on x_2 [8, 128, 64]
    const rng = new Rng(21);
    const leaf = (s: number[]) =>
      T.tensor(rng.fillUniform(new Float32Array(s.reduce((a, b) => a * b, 1)), -1, 1), { shape: s }).requireGrad();
    const x1 = leaf([8, 128, 96]);
    const x2 = leaf([8, 128, 64]);
    const w1 = leaf([192, 96]);
    const w2 = leaf([256, 64]);
    const r1 = T.tensor(rng.fillUniform(new Float32Array(1024 * 192), -1, 1), { shape: [8, 128, 192] });
    const r2 = T.tensor(rng.fillUniform(new Float32Array(1024 * 256), -1, 1), { shape: [8, 128, 256] });
    const grads = (ys: (a: T.Tensor, b: T.Tensor) => T.Tensor[]) => {
      for (const t of [x1, x2, w1, w2]) t.grad = null;
      const [y1, y2] = ys(x1.mul(1.5), x2.mul(0.5)) as [T.Tensor, T.Tensor];
      y1.mul(r1).sum().add(y2.mul(r2).sum()).backward();
      return [y1, y2, x1.grad!, x2.grad!, w1.grad!, w2.grad!];
    };
    const a = grads((a1, a2) => [T.linear(a1, w1), T.linear(a2, w2)]);
    const b = grads((a1, a2) => T.linears([a1, a2], [w1, w2]));
    a.forEach((t, i) => same(b[i]!, t));
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

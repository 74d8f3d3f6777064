// One MLA layer's attention core, forward + backward, at the tiny preset's training shape (8 x 128
// tokens, 4 heads, nope 32 / rope 16 / v 32): core's fused ropeAttention (what MLA.forward runs on the
// CPU) against the composed form it replaced (split, rotate, concat, expand, causalAttention),
// alternating in one process, one GEMM thread; minimum process CPU time of each over the repetitions.
//   taskset -c 1 node --import tsx --conditions=@dsv3/source bench/attention.ts [--reps N]
import * as T from '@dsv3/core';
const [B, S, H, dn, dr, dv] = [8, 128, 4, 32, 16, 32];
const rng = new T.Rng(1);
const r = (shape: number[]) =>
  T.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()),
    { shape },
  );
const q = r([B, S, H, dn + dr]),
  kv = r([B, S, H, dn + dv]),
  kr = r([B, S, dr]);
const cos = r([1, S, dr / 2]),
  sin = r([1, S, dr / 2]);
const g = r([B, S, H, dv]);
const fused = () => {
  const xs = [q, kv, kr].map((t) => t.detach().requireGrad());
  const o = T.ropeAttention(xs[0]!, xs[1]!, xs[2]!, cos, sin, { scale: 0.1, interleave: true });
  T.sum(T.mul(o, g)).backward();
};
const composed = () => {
  const xs = [q, kv, kr].map((t) => t.detach().requireGrad());
  const [qn, qr] = T.split(xs[0]!, [dn, dr], -1) as [T.Tensor, T.Tensor];
  const [kn, v] = T.split(xs[1]!, [dn, dv], -1) as [T.Tensor, T.Tensor];
  const krot = T.rotaryEmbedding(T.reshape(xs[2]!, [B, S, 1, dr]), cos, sin, true);
  const k = T.concat([kn, T.expand(krot, [B, S, H, dr])], -1);
  const o = T.causalAttention(T.concat([qn, T.rotaryEmbedding(qr, cos, sin, true)], -1), k, v, 0.1);
  T.sum(T.mul(o, g)).backward();
};
T.setGemmThreads(1);
const f = { fused: [] as number[], composed: [] as number[] };
const reps = Number(process.argv[process.argv.indexOf('--reps') + 1] ?? 40) || 40;
for (let i = 0; i < reps; i++)
  for (const [n, fn] of [
    ['fused', fused],
    ['composed', composed],
  ] as const) {
    const c0 = process.cpuUsage();
    fn();
    const c = process.cpuUsage(c0);
    if (i > 2) f[n].push((c.user + c.system) / 1000);
  }
const best = (a: number[]) => Math.min(...a);
console.log(
  `one layer's attention, forward + backward, CPU ms (min of ${reps - 3}): fused ${best(f.fused).toFixed(1)}, composed ${best(f.composed).toFixed(1)}`,
);

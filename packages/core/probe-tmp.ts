import { cpu, raw, wrap } from './src/cpu/backend.js';
import * as k from './src/cpu/rope-attention-kernels.js';
import { Rng, setGemmThreads } from './src/index.js';
setGemmThreads(1);
const [B, S, H, dn, dr, dv] = [8, 128, 4, 32, 16, 32];
const rng = new Rng(1);
const r = (shape: number[]) => wrap('f32', shape, Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()));
const ins = [r([B, S, H, dn + dr]), r([B, S, H, dn + dv]), r([B, S, dr]), r([1, S, dr / 2]), r([1, S, dr / 2])];
const dO = r([B, S, H, dv]);
let tot = 0;
for (let i = 0; i < 40; i++) {
  if (i === 10) { (globalThis as any).__tt = {}; tot = 0; }
  const t0 = performance.now();
  const [o, lse] = k.ropeAttentionKernel(cpu, ins, { scale: 0.1, interleave: false });
  k.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], { scale: 0.1, interleave: false });
  tot += performance.now() - t0;
}
const t = (globalThis as any).__tt;
console.log('per fwd+bwd ms: total', (tot / 30).toFixed(2), Object.entries(t).map(([k, v]) => `${k} ${((v as number) / 30).toFixed(2)}`).join(' '));

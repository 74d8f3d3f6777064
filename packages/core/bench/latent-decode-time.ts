// MLA's absorbed attention for one decode step (S = 1, one query row per head against every key of each
// layer), by context length: what a decode step pays for attention as the context grows. V3-mini's
// shapes by default (8 layers, H 8, C 256, R 32, each layer its own keys); medians (and bests) of ms per
// step over --reps. With --old FILE (a copy of an earlier latent-attention.ts placed next to this one,
// so its imports resolve) the two alternate, with a bitwise check of their outputs. --variant
// 'name:key=value,...' (gemmConfig fields, e.g. latentKeyPieces=1) adds this tree under those settings,
// alternating call by call; --resident places the keys in the engine's memory (a CPU cache's pages: read
// in place) instead of host arrays (copied per call).
// usage: npx tsx --conditions=@dsv3/source bench/latent-decode-time.ts [--threads 2] [--reps 41]
//        [--lengths 32,128,512,1024] [--layers 8] [--old src/cpu/gemm/latent-attention-old.ts]
//        [--resident] [--variant whole:latentKeyPieces=1 ...]
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { latentAttention, type LatentAttentionArgs } from '../src/cpu/gemm/latent-attention.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    reps: { type: 'string', default: '41' },
    lengths: { type: 'string', default: '32,128,512,1024' },
    layers: { type: 'string', default: '8' },
    old: { type: 'string' },
    resident: { type: 'boolean', default: false },
    variant: { type: 'string', multiple: true, default: [] },
  },
});
type Config = Record<string, number | boolean>;
const cfg = gemmConfig as unknown as Config;
const settings = (spec: string): [string, Config] => {
  const [name, body = ''] = spec.split(':');
  const set: Config = {};
  for (const kv of body.split(',').filter(Boolean)) {
    const [key, raw] = kv.split('=') as [string, string];
    if (!(key in cfg)) throw new Error(`latent-decode-time: gemmConfig has no field "${key}"`);
    set[key] = raw === 'true' ? true : raw === 'false' ? false : Number(raw);
  }
  return [name!, set];
};
setGemmThreads(Number(values.threads));
const [reps, layers] = [Number(values.reps), Number(values.layers)];
const [H, C, R] = [8, 256, 32];
type Attend = (a: LatentAttentionArgs) => boolean;
const variants: [string, Attend][] = [['this tree', latentAttention]];
for (const [name, set] of values.variant.map(settings)) {
  const saved = Object.fromEntries(Object.keys(set).map((k) => [k, cfg[k]!]));
  variants.push([
    name,
    (a) => {
      Object.assign(cfg, set);
      try {
        return latentAttention(a);
      } finally {
        Object.assign(cfg, saved);
      }
    },
  ]);
}
if (values.old) {
  const old = (await import(resolve(values.old))) as { latentAttention: Attend };
  variants.unshift(['old', old.latentAttention]);
}
const place = (x: Float32Array): Float32Array => {
  if (!values.resident) return x;
  const r = allocResident('f32', x.length) as Float32Array;
  r.set(x);
  return r;
};
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
for (const T of values.lengths.split(',').map(Number)) {
  // each layer's own keys (a step walks 8 layers' pages, not one layer's 8 times)
  const keys = Array.from({ length: layers }, (_, l) => ({
    kv: place(Float32Array.from(randomUniform(T * C, 10 + l))),
    kr: place(Float32Array.from(randomUniform(T * R, 20 + l))),
  }));
  const qL = Float32Array.from(randomUniform(H * C, 1, -3, 3));
  const qR = Float32Array.from(randomUniform(H * R, 2, -3, 3));
  const seqs = [{ T, offset: T - 1, rowOf: null, base: 0 }];
  const outs = variants.map(() => new Float32Array(H * C));
  const ms: number[][] = variants.map(() => []);
  for (let r = 0; r <= reps; r++)
    for (const [i, [, attend]] of variants.entries()) {
      const t = performance.now();
      for (const { kv, kr } of keys)
        attend({ S: 1, H, C, R, scale: 1 / Math.sqrt(C + R), qL, qR, kv, kr, seqs, out: outs[i]! });
      if (r > 0) ms[i]!.push(performance.now() - t); // rep 0 warms up
    }
  const same = outs.every((o) => Buffer.from(o.buffer).equals(Buffer.from(outs[0]!.buffer)));
  // (key pieces merge another sum order: how far from the first variant's output)
  const drift = Math.max(...outs.map((o) => o.reduce((m, v, i) => Math.max(m, Math.abs(v - outs[0]![i]!)), 0)));
  const anchor = median(ms[0]!);
  const each = variants.map(
    ([name], i) =>
      `${name} ${median(ms[i]!).toFixed(3)} ms (${(anchor / median(ms[i]!)).toFixed(2)}x, best ${Math.min(...ms[i]!).toFixed(3)})`,
  );
  console.log(
    `T ${T}: ${each.join(', ')}${variants.length > 1 ? `; outputs ${same ? 'bitwise equal' : `differ by <= ${drift.toExponential(1)}`}` : ''}`,
  );
}

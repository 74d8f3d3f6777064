// `npm run bench` for @dsv3/mla: absorbed decode attention over the paged latent cache per token
// vs context length (CPU kernel, the composed-from-core-ops path, and WebGPU when an adapter is
// found), one prefill point, and KV-cache bytes per token against MHA/GQA/MQA.
//
//   npm run bench -- [--max 32768] [--reps 5] [--no-gpu] [--no-composed]
//
// Times are the best of N repetitions; every rate is also given as a ratio to an anchor measured in the same run (core's
// f32 matmul at the decode GEMM shape), since absolute times depend on the machine and its load.
import {
  bytesPerElement,
  cpu,
  CpuStorage,
  noGrad,
  runKernel,
  tensor,
  type Backend,
  type KernelTensor,
  type Tensor,
} from '@dsv3/core';
import {
  kvElementsPerToken,
  latentAttention,
  pagedLatentAttention,
  PagedLatentCache,
  type AttentionImpl,
} from '../src/index.js';

const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(`--${name}`);
const opt = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const MAX = opt('max', 32768);
const REPS = opt('reps', 5);

// V3-like attention of one layer, with 16 heads (V3 has 128; 16 is one tensor-parallel shard of 8)
const H = 16;
const C = 512;
const R = 64;
const BLOCK = 16;
const SCALE = 0.1352337789;

function rand(n: number, seed: number): Float32Array {
  let x = seed >>> 0 || 1;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = ((x >>> 0) / 4294967296 - 0.5) * 2;
  }
  return a;
}

// Best of the repetitions: on a shared machine the minimum is the least disturbed measurement.
function best(xs: number[]): number {
  return Math.min(...xs);
}

function timeSync(f: () => void, reps = REPS, warm = 2): number {
  for (let i = 0; i < warm; i++) f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    f();
    ts.push(performance.now() - t0);
  }
  return best(ts);
}

async function timeAsync(f: () => Promise<void>, reps = REPS, warm = 2): Promise<number> {
  for (let i = 0; i < warm; i++) await f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await f();
    ts.push(performance.now() - t0);
  }
  return best(ts);
}

/** FLOPs of one decode step over T cached tokens: scores (C+R per head and key) + P·c_KV (C). */
const decodeFlops = (T: number): number => 2 * H * (C + R + C) * T;

function filledCache(T: number, backend: Backend = cpu): { cache: PagedLatentCache; seq: number } {
  const cache = new PagedLatentCache({
    numLayers: 1,
    kvLoraRank: C,
    ropeDim: R,
    numBlocks: Math.ceil(T / BLOCK) + 1,
    blockSize: BLOCK,
    backend,
  });
  const seq = cache.allocate();
  const chunk = 4096;
  for (let t = 0; t < T; t += chunk) {
    const n = Math.min(chunk, T - t);
    cache.append(0, seq, rand(n * C, 1 + t), rand(n * R, 2 + t));
  }
  return { cache, seq };
}

function anchorGflops(): number {
  // core's f32 matmul at the decode GEMM shape: [16, 576] x [4096, 576]^T
  const a: KernelTensor = { storage: new CpuStorage(rand(H * (C + R), 3)), shape: [H, C + R], dtype: 'f32' };
  const b: KernelTensor = { storage: new CpuStorage(rand(4096 * (C + R), 4)), shape: [4096, C + R], dtype: 'f32' };
  const ms = timeSync(() => void runKernel('matmul', cpu, [a, b], { transA: false, transB: true }), 20, 5);
  return (2 * H * (C + R) * 4096) / ms / 1e6;
}

interface Row {
  T: number;
  kernelMs: number;
  composedMs: number | null;
  gpuMs: number | null;
}

async function main(): Promise<void> {
  const lines: string[] = [];
  const out = (s = ''): void => {
    lines.push(s);
    console.log(s);
  };
  const anchor = anchorGflops();
  const q = (be: Backend): [Tensor, Tensor] => [
    tensor(rand(H * C, 5), { shape: [1, 1, H, C], backend: be }),
    tensor(rand(H * R, 6), { shape: [1, 1, H, R], backend: be }),
  ];
  let gpu: (Backend & { dispose(): void; adapterInfo?: { description?: string; vendor?: string } }) | null = null;
  if (!flag('no-gpu')) {
    try {
      const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
      gpu = await createNodeWebGpuBackend();
    } catch (e) {
      console.error(`(no WebGPU: ${e instanceof Error ? e.message.split('\n')[0] : String(e)})`);
    }
  }
  const rows: Row[] = [];
  const [qc, qr] = q(cpu);
  const sizes: number[] = [];
  for (let T = 1024; T <= MAX; T *= 2) sizes.push(T);
  const caches = new Map(sizes.map((T) => [T, filledCache(T)] as const));
  const decode = (T: number, impl: AttentionImpl) => (): void => {
    const { cache, seq } = caches.get(T)!;
    void noGrad(() => pagedLatentAttention(qc, qr, cache, 0, [seq], { scale: SCALE, impl }));
  };
  // warm up the JIT and the GEMM engine, then measure the sizes round-robin (best of REPS rounds),
  // so that load from other processes on a shared machine spreads over all sizes
  timeSync(decode(sizes[Math.min(2, sizes.length - 1)]!, 'kernel'), 1, 10);
  const kernelMs = new Map(sizes.map((T) => [T, Infinity]));
  const composedMs = new Map(sizes.map((T) => [T, Infinity]));
  for (let rep = 0; rep < REPS; rep++) {
    for (const T of sizes) kernelMs.set(T, Math.min(kernelMs.get(T)!, timeSync(decode(T, 'kernel'), 1, 0)));
    if (!flag('no-composed') && rep < 3)
      for (const T of sizes)
        composedMs.set(T, Math.min(composedMs.get(T)!, timeSync(decode(T, 'composed'), 1, rep === 0 ? 1 : 0)));
  }
  const gq = gpu ? q(gpu) : null;
  for (const T of sizes) {
    let gpuMs: number | null = null;
    if (gpu && gq) {
      const [gqc, gqr] = gq;
      const { cache, seq } = filledCache(T, gpu);
      gpuMs = await timeAsync(
        async () => {
          const o = noGrad(() => pagedLatentAttention(gqc, gqr, cache, 0, [seq], { scale: SCALE, impl: 'kernel' }));
          await o.data();
          o.dispose();
        },
        T > 8192 ? 2 : 3,
        1,
      );
      cache.dispose();
    }
    const c = composedMs.get(T)!;
    rows.push({ T, kernelMs: kernelMs.get(T)!, composedMs: Number.isFinite(c) ? c : null, gpuMs });
    console.error(
      `T=${T}: kernel ${kernelMs.get(T)!.toFixed(2)} ms, composed ${Number.isFinite(c) ? c.toFixed(1) : '-'} ms, webgpu ${gpuMs?.toFixed(1) ?? '-'} ms`,
    );
  }

  out(
    `Decode attention, one token, ${H} heads, d_c ${C}, d_R ${R}, block ${BLOCK} (f32; CPU kernel best of ${REPS} round-robin rounds, composed best of 3, WebGPU best of 3 (2 above 8K)).`,
  );
  out(`Anchor: core f32 matmul [${H}, ${C + R}] x [4096, ${C + R}]^T = ${anchor.toFixed(1)} GFLOP/s.`);
  out();
  const gpuCol = gpu ? ` | WebGPU kernel (ms) |` : ' |';
  out(
    `| context | CPU kernel (ms) | µs per 1K ctx | GFLOP/s | vs anchor | latent GB/s | composed core ops (ms) | composed / kernel${gpuCol}`,
  );
  out(`|---:|---:|---:|---:|---:|---:|---:|---:|${gpu ? '---:|' : ''}`);
  for (const r of rows) {
    const gf = decodeFlops(r.T) / r.kernelMs / 1e6;
    const gbs = (r.T * (C + R) * 4) / r.kernelMs / 1e6;
    const comp = r.composedMs === null ? '—' : r.composedMs.toFixed(1);
    const ratio = r.composedMs === null ? '—' : `${(r.composedMs / r.kernelMs).toFixed(1)}x`;
    const g = gpu ? ` ${r.gpuMs === null ? '—' : r.gpuMs.toFixed(1)} |` : '';
    out(
      `| ${r.T / 1024}K | ${r.kernelMs.toFixed(2)} | ${((r.kernelMs * 1000 * 1024) / r.T).toFixed(0)} | ${gf.toFixed(1)} | ${(gf / anchor).toFixed(2)} | ${gbs.toFixed(2)} | ${comp} | ${ratio} |${g}`,
    );
  }
  if (gpu)
    out(
      `\nWebGPU adapter: ${gpu.adapterInfo?.description ?? gpu.adapterInfo?.vendor ?? 'unknown'} (times include the host→device sync of changed pool blocks and the readback).`,
    );

  // one prefill point: the tiled kernel vs the composed path that materializes S x S scores per head
  const S = 1024;
  const pq = tensor(rand(S * H * C, 7), { shape: [1, S, H, C] });
  const pr = tensor(rand(S * H * R, 8), { shape: [1, S, H, R] });
  const pk = tensor(rand(S * C, 9), { shape: [1, S, C] });
  const pkr = tensor(rand(S * R, 10), { shape: [1, S, R] });
  const pre = (impl: AttentionImpl) => (): void =>
    void noGrad(() => latentAttention(pq, pr, pk, pkr, { scale: SCALE, impl }));
  const pk1 = timeSync(pre('kernel'), 3, 1);
  const pc1 = timeSync(pre('composed'), 3, 1);
  out();
  out(
    `Causal prefill S = T = ${S} (same heads): tiled kernel ${pk1.toFixed(0)} ms, composed ${pc1.toFixed(0)} ms (materializes ${H}x${S}x${S} scores).`,
  );

  // cache bytes per token
  out();
  out('KV cache per token (elements; bytes in BF16 = 2x):');
  out();
  out(
    '| model / layer | MLA (d_c + d_R)·l | MHA 2·n_h·d_h·l | MHA, K = nope+rope wide | GQA-8 2·8·d_h·l | MQA 2·d_h·l |',
  );
  out('|---|---:|---:|---:|---:|---:|');
  const table = (
    name: string,
    l: number,
    nh: number,
    dh: number,
    nope: number,
    rope: number,
    v: number,
    dc: number,
  ): void => {
    const mla = kvElementsPerToken({ kind: 'mla', numLayers: l, kvLoraRank: dc, ropeDim: rope });
    const mha = kvElementsPerToken({ kind: 'mha', numLayers: l, numHeads: nh, headDim: dh });
    const mhaWide = nh * (nope + rope + v) * l;
    const gqa = kvElementsPerToken({ kind: 'gqa', numLayers: l, numHeads: nh, numGroups: 8, headDim: dh });
    const mqa = kvElementsPerToken({ kind: 'mqa', numLayers: l, headDim: dh });
    const f = (x: number): string => `${x.toLocaleString('en-US')} (${(x / mla).toFixed(1)}x)`;
    out(`| ${name} | ${mla.toLocaleString('en-US')} | ${f(mha)} | ${f(mhaWide)} | ${f(gqa)} | ${f(mqa)} |`);
  };
  table('bench layer (16 heads, d_h 128, d_c 512, d_R 64), 1 layer', 1, H, 128, 128, R, 128, C);
  table('DeepSeek-V2 (60 layers, 128 heads, d_h 128, d_c 512, d_R 64)', 60, 128, 128, 128, 64, 128, 512);
  table('DeepSeek-V3 (61 layers, 128 heads, d_h 128, d_c 512, d_R 64)', 61, 128, 128, 128, 64, 128, 512);
  out();
  out(
    `V3 in BF16: ${kvElementsPerToken({ kind: 'mla', numLayers: 61, kvLoraRank: 512, ropeDim: 64 }) * bytesPerElement('bf16')} bytes per token.`,
  );
  gpu?.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

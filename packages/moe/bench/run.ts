// MoE layer throughput: the grouped-GEMM layer (sorted dispatch, grouped GEMMs over the expert
// segments, scatter-add combine) against the same layer computed the naive ways:
//   - "masked dense": one pass per expert over ALL tokens, the output masked by the routing weight
//     (0 for tokens not routed there), as a straightforward translation of the HF MoE loop does;
//   - "gather loop": per expert, gather its tokens, run its SwiGLU, scatter-add (Hugging Face's
//     DeepseekV3MoE.moe loop with torch.where), from core ops.
// All variants share the gate, the shared expert and the weights, and their outputs are checked to agree.
//
//   npm run bench -w @dsv3/moe                       (or: cd packages/moe && npx tsx bench/run.ts)
//   options: --tokens 512 --iters 5 --backward (also time forward+backward) --no-cpu --no-webgpu --gpu-tokens N
import { relativeError } from '@dsv3/core/testing';
import { availableParallelism, loadavg } from 'node:os';
import {
  add,
  full,
  indexAdd,
  indexSelect,
  mul,
  narrow,
  noGrad,
  randn,
  reshape,
  scatterAlong,
  sum,
  tensor,
  toBackend,
  type Backend,
  type Tensor,
} from '@dsv3/core';
import { MoE } from '../src/index';
import { V3_MINI_MOE } from './v3-mini-moe';

const args = process.argv.slice(2);
const opt = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const T = opt('tokens', 512);
const ITERS = opt('iters', 5);
const useGpu = !args.includes('--no-webgpu');
const withBackward = args.includes('--backward');
const useCpu = !args.includes('--no-cpu');

const cfg = V3_MINI_MOE;

type Variant = (moe: MoE, x: Tensor) => Promise<Tensor>;

const grouped: Variant = async (moe, x) => moe.forward(x);

/** Routed part the naive ways; both add the shared expert. */
const maskedDense: Variant = async (moe, x) => {
  const r = moe.gate.forward(x);
  const E = moe.config.nRoutedExperts;
  const T = x.shape[0]!;
  // dense [T, E] routing weights: w[t, e] = weight if e was chosen for t, else 0 (differentiable)
  const dense = scatterAlong(full([T, E], 0, { backend: x.backend }), r.indices, r.weights, -1);
  let out = moe.sharedExperts!.forward(x);
  for (let e = 0; e < E; e++) out = add(out, mul(moe.experts.at(e).forward(x), narrow(dense, 1, e, 1)));
  return out;
};

const gatherLoop: Variant = async (moe, x) => {
  const r = moe.gate.forward(x);
  const E = moe.config.nRoutedExperts;
  const T = x.shape[0]!;
  const k = r.k;
  const idx = await r.indices.data(); // the naive loop routes on the host
  const rowsOf: number[][] = Array.from({ length: E }, () => []);
  const slotOf: number[][] = Array.from({ length: E }, () => []);
  for (let p = 0; p < T * k; p++) {
    rowsOf[idx[p]!]!.push(Math.floor(p / k));
    slotOf[idx[p]!]!.push(p);
  }
  const wFlat = reshape(r.weights, [-1]);
  let out = full([T, moe.config.hiddenSize], 0, { backend: x.backend });
  for (let e = 0; e < E; e++) {
    if (rowsOf[e]!.length === 0) continue;
    const rows = tensor(Int32Array.from(rowsOf[e]!), { dtype: 'i32', backend: x.backend });
    const slots = tensor(Int32Array.from(slotOf[e]!), { dtype: 'i32', backend: x.backend });
    const y = moe.experts.at(e).forward(indexSelect(x, rows, 0));
    out = indexAdd(out, 0, rows, mul(y, reshape(indexSelect(wFlat, slots, 0), [-1, 1])));
  }
  return add(out, moe.sharedExperts!.forward(x));
};

interface Timing {
  /** median wall time, ms */
  wall: number;
  /** median CPU time of the whole process (all threads: GEMM workers, Dawn/lavapipe), ms */
  cpu: number;
}

/**
 * Median wall and process-CPU time of each job, run round-robin (job 1, job 2, ..., job 1, ...) so that
 * load from other processes on a shared machine spreads evenly over the variants. One warm-up round.
 */
async function timeRoundRobin(jobs: (() => Promise<void>)[], iters: number, be: Backend): Promise<Timing[]> {
  for (const j of jobs) await j();
  await be.sync();
  const wall: number[][] = jobs.map(() => []);
  const cpuMs: number[][] = jobs.map(() => []);
  for (let i = 0; i < iters; i++) {
    for (let k = 0; k < jobs.length; k++) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await jobs[k]!();
      await be.sync();
      wall[k]!.push(performance.now() - t0);
      const c = process.cpuUsage(c0);
      cpuMs[k]!.push((c.user + c.system) / 1000);
    }
  }
  const med = (a: number[]): number => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  return jobs.map((_, k) => ({ wall: med(wall[k]!), cpu: med(cpuMs[k]!) }));
}

function table(label: string, tokens: number, names: string[], t: Timing[]): void {
  console.log(label);
  console.log('| variant | wall ms / layer | tokens/s (wall) | process CPU ms | wall vs grouped | CPU vs grouped |');
  console.log('|---|---:|---:|---:|---:|---:|');
  names.forEach((n, i) => {
    const r = t[i]!;
    console.log(
      `| ${n} | ${r.wall.toFixed(1)} | ${Math.round((tokens * 1000) / r.wall)} | ${r.cpu.toFixed(0)} | ${(r.wall / t[0]!.wall).toFixed(2)}x | ${(r.cpu / t[0]!.cpu).toFixed(2)}x |`,
    );
  });
}

async function benchBackend(
  label: string,
  be: Backend,
  tokens: number,
  iters: number,
  variants: [string, Variant][],
): Promise<void> {
  const moe = new MoE(cfg, { seed: 1, backend: be, std: 0.02 });
  const x = await toBackend(randn([tokens, cfg.hiddenSize], { seed: 2 }), be);
  const outs: Float32Array[] = [];
  for (const [, v] of variants) outs.push((await (await noGrad(() => v(moe, x))).data()) as Float32Array);
  for (let i = 1; i < outs.length; i++) {
    const e = relativeError(outs[i]!, outs[0]!);
    if (!(e < 1e-4)) throw new Error(`${variants[i]![0]} disagrees with ${variants[0]![0]} (rel ${e})`);
  }
  const names = variants.map(([n]) => n);
  const fwd = await timeRoundRobin(
    variants.map(([, v]) => async () => {
      const o = await noGrad(() => v(moe, x));
      await o.data();
    }),
    iters,
    be,
  );
  console.log('');
  table(
    `${label}: ${tokens} tokens, hidden ${cfg.hiddenSize}, ${cfg.nRoutedExperts} experts x ${cfg.moeIntermediateSize}, top-${cfg.numExpertsPerTok}, ${cfg.nGroup} groups / top-${cfg.topkGroup}, ${cfg.nSharedExperts} shared; forward (noGrad), median of ${iters}`,
    tokens,
    names,
    fwd,
  );
  if (withBackward) {
    const bwd = await timeRoundRobin(
      variants.map(([, v]) => async () => {
        moe.zeroGrad();
        const o = await v(moe, x);
        sum(o).backward();
      }),
      Math.max(2, Math.ceil(iters / 2)),
      be,
    );
    console.log('');
    table(`${label}: forward + backward (all parameter gradients)`, tokens, names, bwd);
  }
}

async function main(): Promise<void> {
  const { cpu } = await import('@dsv3/core');
  console.log(
    `CPU: ${availableParallelism()} core(s), load average ${loadavg()
      .map((v) => v.toFixed(1))
      .join(' ')}, node ${process.version}`,
  );
  if (useCpu)
    await benchBackend('cpu', cpu, T, ITERS, [
      ['grouped GEMM (fused kernel)', grouped],
      ['gather loop (HF moe loop, core ops)', gatherLoop],
      ['masked dense (one pass per expert over all tokens)', maskedDense],
    ]);
  if (!useGpu) return;
  let gpu: (Backend & { dispose(): void; adapterInfo?: { description: string } }) | null = null;
  try {
    const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
    gpu = await createNodeWebGpuBackend();
  } catch (e) {
    console.log(`\nwebgpu: skipped (${e instanceof Error ? e.message : String(e)})`);
    return;
  }
  try {
    const gt = opt('gpu-tokens', T);
    await benchBackend(
      `webgpu (${gpu.adapterInfo?.description ?? 'adapter'})`,
      gpu,
      gt,
      Math.max(2, Math.min(ITERS, 3)),
      [
        ['grouped GEMM (WGSL kernel)', grouped],
        ['gather loop (HF moe loop, core ops)', gatherLoop],
        ['masked dense (one pass per expert over all tokens)', maskedDense],
      ],
    );
  } finally {
    gpu.dispose();
  }
}

await main();

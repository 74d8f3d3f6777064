// Parallel training benchmark (tiny preset, f32, worker-thread ranks over the local transport):
// tokens/s at 1, 2, 4 and 8 ranks (dp·ep layouts; scaling efficiency against 1 rank measured in the
// same run), and the expert-parallel all-to-all overlap with the shared expert on vs off (interleaved).
// Usage: npx tsx --conditions=@dsv3/source bench/parallel.ts [--steps 3] [--seq-len 64] [--sequences 16]
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { launchLocal } from '@dsv3/parallel';

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const script = fileURLToPath(new URL('./parallel-rank.ts', import.meta.url));
const base = {
  STEPS: String(arg('steps', 3)),
  SEQ_LEN: String(arg('seq-len', 64)),
  SEQUENCES: String(arg('sequences', 16)),
};

interface Measured {
  tokensPerSec: number;
  commWaitMs: number;
  /** Largest parameter bytes one rank holds. */
  heldBytes: number;
  /** EP bytes sent to other nodes' ranks, all ranks together, per timed step. */
  crossNodeBytes: number;
}

async function measure(nproc: number, env: Record<string, string>): Promise<Measured> {
  const sink = new PassThrough();
  sink.resume();
  const res = await launchLocal({ nproc, script, env: { ...base, ...env }, stdout: sink, stderr: sink });
  const bad = res.find((r) => r.error || r.exitCode !== 0);
  if (bad) throw new Error(`rank ${bad.rank} failed: ${bad.error?.message ?? bad.exitCode}`);
  const rs = res.map((r) => r.result as Omit<Measured, 'heldBytes'> & { heldBytes: number });
  return {
    tokensPerSec: rs[0]!.tokensPerSec,
    commWaitMs: rs.reduce((a, r) => a + r.commWaitMs, 0) / rs.length,
    heldBytes: Math.max(...rs.map((r) => r.heldBytes)),
    crossNodeBytes: rs.reduce((a, r) => a + r.crossNodeBytes, 0) / Number(base.STEPS),
  };
}

const MB = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
// Per rank count, a data × expert layout and one with a pipeline (its schedule).
const layouts: [number, string, Record<string, string>][] = [
  [1, 'dp=1', {}],
  [2, 'ep=2', {}],
  [2, 'pp=2', { SCHEDULE: '1f1b' }],
  [4, 'dp=2,ep=2', {}],
  [4, 'pp=2,ep=2', { SCHEDULE: 'dualpipe' }],
  [8, 'dp=2,ep=4', {}],
  [8, 'dp=2,pp=2,ep=2', { SCHEDULE: 'dualpipe' }],
];
console.log(`tiny preset, f32, ${base.SEQUENCES} x ${base.SEQ_LEN} tokens per step, ${base.STEPS} timed steps`);
let one = 0;
for (const [n, p, env] of layouts) {
  const r = await measure(n, { PARALLEL: p, ...env });
  if (n === 1) one = r.tokensPerSec;
  console.log(
    `${String(n).padStart(2)} ranks ${`${p} ${env.SCHEDULE ?? ''}`.padEnd(24)} ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   x${(r.tokensPerSec / one).toFixed(2)} (efficiency ${((r.tokensPerSec / one / n) * 100).toFixed(0)}%)   EP comm wait ${r.commWaitMs.toFixed(0)} ms/rank   parameters held ${MB(r.heldBytes)} per rank`,
  );
}
console.log('overlap of dispatch with the shared expert, dp=1,ep=4 (interleaved, 2 rounds):');
for (let round = 0; round < 2; round++) {
  for (const overlap of ['1', '0']) {
    const r = await measure(4, { PARALLEL: 'dp=1,ep=4', OVERLAP: overlap });
    console.log(
      `  round ${round + 1} overlap ${overlap === '1' ? 'on ' : 'off'}  ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   EP comm wait ${r.commWaitMs.toFixed(0)} ms/rank`,
    );
  }
}
console.log('ep=4 as 2 nodes of 2: flat vs two-hop dispatch (interleaved, 2 rounds):');
for (let round = 0; round < 2; round++) {
  for (const hops of ['flat', 'two-hop']) {
    const env: Record<string, string> = { PARALLEL: 'ep=4', ...(hops === 'two-hop' && { RANKS_PER_NODE: '2' }) };
    // the flat run counts its cross-node bytes with the same node split (the layout's nodes only label ranks)
    const r = await measure(4, hops === 'flat' ? { ...env, RANKS_PER_NODE: '2', FLAT: '1' } : env);
    console.log(
      `  round ${round + 1} ${hops.padEnd(7)} ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   cross-node EP bytes ${MB(r.crossNodeBytes)} per step`,
    );
  }
}

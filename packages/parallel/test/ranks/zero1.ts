// Run by every rank: ZeRO-1 AdamW against core's AdamW on one process holding every rank's batch.
// Rank r's gradient is that of its own data; the reference sums them. Reports the worst relative errors.
import {
  AdamW,
  Linear,
  Module,
  clipGradNorm,
  crossEntropy,
  silu,
  tensor,
  type Parameter,
  type Tensor,
} from '@dsv3/core';
import { randomTensor64, relativeError } from '@dsv3/core/testing';
import { Zero1AdamW, initProcessGroup, loadZeroShard, reportResult, saveZeroShard } from '@dsv3/parallel';

const pg = await initProcessGroup({ timeoutMs: 120_000 });
const P = pg.size;
const dir = process.env.ZERO_DIR!;

class Net extends Module {
  readonly a: Linear;
  readonly b: Linear;
  constructor(dtype: 'f64' | 'f32') {
    super();
    this.a = this.child('a', new Linear(7, 13, { dtype, seed: 1, bias: true }));
    this.b = this.child('b', new Linear(13, 5, { dtype, seed: 2, bias: true }));
  }
  forward(x: Tensor): Tensor {
    return this.b.forward(silu(this.a.forward(x)));
  }
}
const groupsOf = (n: Net) => [
  { params: n.parameters().filter((p) => p.value.ndim >= 2), weightDecay: 0.1 },
  { params: n.parameters().filter((p) => p.value.ndim < 2), weightDecay: 0 },
];
const data = (r: number, step: number, dtype: 'f64' | 'f32') => ({
  x: randomTensor64([3 + r, 7], 40 + 10 * step + r).cast(dtype),
  y: tensor(
    Array.from({ length: 3 + r }, (_, i) => (i + r + step) % 5),
    { dtype: 'i32' },
  ),
});
// Each rank's loss is its share of the whole batch's mean: summing gradients gives the batch gradient.
const total = Array.from({ length: P }, (_, r) => 3 + r).reduce((a, b) => a + b, 0);
const lossOf = (n: Net, r: number, step: number) => {
  const d = data(r, step, n.a.weight.value.dtype as 'f64' | 'f32');
  return crossEntropy(n.forward(d.x), d.y).mul((3 + r) / total);
};
const LR = 0.05;
const CLIP = 0.5;

const out: Record<string, number> = {};
for (const [dtype, momentDType] of [
  ['f64', 'f32'],
  ['f32', 'bf16'],
] as const) {
  // reference: one process, whole batch
  const ref = new Net(dtype);
  const rg = groupsOf(ref);
  const opts = rg.map(
    (g) =>
      new AdamW(g.params as Parameter[], { weightDecay: g.weightDecay, betas: [0.9, 0.95], stateDType: momentDType }),
  );
  const zNet = new Net(dtype);
  let zero = new Zero1AdamW(groupsOf(zNet), pg, { betas: [0.9, 0.95], momentDType });
  let worstNorm = 0;
  for (let step = 0; step < 4; step++) {
    for (const o of opts) o.zeroGrad();
    for (let r = 0; r < P; r++) lossOf(ref, r, step).backward();
    const refNorm = await clipGradNorm(ref.parameters(), CLIP);
    for (const o of opts) o.stepUpdate(LR);
    zero.zeroGrad();
    lossOf(zNet, pg.rank, step).backward();
    const { gradNorm } = await zero.stepUpdate(LR, CLIP);
    worstNorm = Math.max(worstNorm, Math.abs(gradNorm - refNorm) / refNorm);
    if (step === 1) {
      // Checkpoint the shard, start a fresh optimizer on a fresh model, resume from it.
      await saveZeroShard(dir, zero.shardState());
      const fresh = new Net(dtype);
      zero = new Zero1AdamW(groupsOf(fresh), pg, { betas: [0.9, 0.95], momentDType });
      await zero.loadShardState(loadZeroShard(dir, pg.rank, P));
      // same object identity needed below: copy the restored values into zNet's parameters
      zNet.parameters().forEach((p, i) => p.assign(fresh.parameters()[i]!.value));
      zero = new Zero1AdamW(groupsOf(zNet), pg, { betas: [0.9, 0.95], momentDType });
      await zero.loadShardState(loadZeroShard(dir, pg.rank, P));
    }
  }
  let worst = 0;
  zNet
    .parameters()
    .forEach(
      (p, i) => (worst = Math.max(worst, relativeError(p.value.dataSync(), ref.parameters()[i]!.value.dataSync()))),
    );
  out[`${dtype}.params`] = worst;
  out[`${dtype}.gradNorm`] = worstNorm;
}
let threw = '';
try {
  loadZeroShard(dir, pg.rank, P + 1);
} catch (e) {
  threw = (e as Error).message;
}
reportResult({ ...out, wrongLayout: threw });
await pg.destroy();

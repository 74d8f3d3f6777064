// The built-in default job until the full trainer lands: trains a tiny SwiGLU MLP language model
// on a synthetic next-token task with @dsv3/core's autograd and AdamW, printing the loss as it falls.
import { AdamW, clipGradNorm, cosineLR, crossEntropy, Embedding, Linear, RMSNorm, Rng, SwiGLU, tensor, type Tensor } from '@dsv3/core';

const vocab = 32;
const dim = 32;
const steps = Number(process.env.DSV3_DEMO_STEPS ?? 200);
const rng = new Rng(0);

// Synthetic data: the next token is (3·token + 1) mod vocab, so a small model can learn it exactly.
function batch(n: number): { ids: Tensor; targets: Tensor } {
  const ids = new Int32Array(n);
  for (let i = 0; i < n; i++) ids[i] = rng.integer(0, vocab);
  return { ids: tensor(ids, { dtype: 'i32' }), targets: tensor(ids.map((t) => (3 * t + 1) % vocab), { dtype: 'i32' }) };
}

const embed = new Embedding(vocab, dim, { rng, std: 0.5 });
const mlp = new SwiGLU(dim, 4 * dim, { rng });
const norm = new RMSNorm(dim);
const head = new Linear(dim, vocab, { rng });
const params = [embed, mlp, norm, head].flatMap((m) => m.parameters());
const opt = new AdamW(params, { lr: 3e-3, betas: [0.9, 0.95], weightDecay: 0.01, stateDType: 'bf16' });
const schedule = cosineLR(3e-3, { warmup: 20, decay: steps, minLR: 3e-4 });

console.log(`dsv3 demo: tiny SwiGLU LM, ${params.reduce((s, p) => s + p.value.size, 0)} parameters, ${steps} steps on the CPU`);
let first = 0;
let last = 0;
for (let step = 0; step < steps; step++) {
  const { ids, targets } = batch(128);
  const h = embed.forward(ids);
  const logits = head.forward(norm.forward(h.add(mlp.forward(h))));
  const loss = crossEntropy(logits, targets);
  opt.zeroGrad();
  loss.backward();
  await clipGradNorm(params, 1.0);
  opt.stepUpdate(schedule(step));
  last = await loss.item();
  if (step === 0) first = last;
  if (step % 20 === 0 || step === steps - 1) console.log(`step ${String(step).padStart(4)}  loss ${last.toFixed(4)}  lr ${schedule(step).toExponential(2)}`);
}
console.log(`loss ${first.toFixed(3)} → ${last.toFixed(3)} (${last < first / 4 ? 'learned' : 'did not learn'} the mapping)`);
if (!(last < first / 4)) process.exitCode = 1;

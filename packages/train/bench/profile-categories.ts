// The bench's tiny / mini training step (bench-step.ts) with the caller's wall time grouped by what the
// model does, in the categories bench/torch_categories.py uses for torch (issue 11, seventeenth session):
// each module's forward is timed exclusive of its child modules, and each autograd node is tagged with the
// category of the module whose forward made it, its backward timed under that category. What the backward
// spends outside those nodes (the loss's own nodes — cross-entropy, the loss scaling —, summing gradient
// contributions, the final wait for the background dW products) and the step's rest (clipping, AdamW,
// read-back, the gate-bias update) are their own lines. Profiling only: wraps prototypes in this process.
//   npx tsx --conditions=@dsv3/source bench/profile-categories.ts [tiny|mini] [--steps N] [--threads T]
import { AdamW, Embedding, Linear, RMSNorm, setGemmThreads, SwiGLU, Tensor } from '@dsv3/core';
import type { GradNode } from '@dsv3/core';
import { DeferredProducts } from '../../core/src/cpu/gemm/deferred-products.js';
import { MLA } from '@dsv3/mla';
import { DecoderLayer, DeepseekV3ForCausalLM } from '@dsv3/model';
import { MoE, MoEGate } from '@dsv3/moe';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
const steps = Number(flag('--steps', '8'));
setGemmThreads(Number(flag('--threads', '2')));

const ATT = 'attention core (rope, scores, softmax, PV)';
const MOE = 'MoE routed experts + dispatch / combine';
type Rule = (parent: string | undefined) => string;
const rules: [object, string, Rule][] = [
  [Embedding.prototype, 'forward', () => 'embedding'],
  [RMSNorm.prototype, 'forward', () => 'norms'],
  [
    Linear.prototype,
    'forward',
    (p) => (p === ATT ? 'MLA projections' : p === 'other (model)' ? 'output head' : (p ?? 'other (model)')),
  ],
  [SwiGLU.prototype, 'forward', (p) => (p === MOE ? 'MoE shared expert' : 'dense MLP')],
  [MLA.prototype, 'forward', () => ATT],
  // the projections' own glue (kv_a's output split; in inference also the down-projections' one job)
  [MLA.prototype, 'projectUnrotated', () => 'MLA projections'],
  [MoEGate.prototype, 'forward', () => 'MoE gate (scores, routing)'],
  [MoE.prototype, 'forwardWithRouting', () => MOE],
  [DecoderLayer.prototype, 'forward', () => 'residual adds'],
  [DeepseekV3ForCausalLM.prototype, 'forward', () => 'other (model)'],
];
const fwd = new Map<string, number>();
const bwd = new Map<string, number>();
const add = (m: Map<string, number>, k: string, ms: number) => m.set(k, (m.get(k) ?? 0) + ms);
const tags = new WeakMap<GradNode, string>();
const frames: { cat: string; child: number }[] = [];

/** Tags the autograd nodes reachable from `out` (a tensor, or an object / array of them) not yet tagged. */
function tagFrom(out: unknown, cat: string): void {
  const roots: Tensor[] = [];
  if (out instanceof Tensor) roots.push(out);
  else if (out && typeof out === 'object')
    for (const v of Object.values(out)) {
      if (v instanceof Tensor) roots.push(v);
      else if (Array.isArray(v)) for (const w of v) if (w instanceof Tensor) roots.push(w);
    }
  const stack = roots.map((t) => t.gradFn).filter((n): n is GradNode => !!n);
  while (stack.length) {
    const n = stack.pop()!;
    if (tags.has(n)) continue;
    tags.set(n, cat);
    for (const k of ['backward', 'backwardParts'] as const) {
      const f = n[k] as ((g: Tensor) => unknown) | undefined;
      if (!f) continue;
      (n as unknown as Record<string, unknown>)[k] = (g: Tensor) => {
        const t0 = performance.now();
        const r = f(g);
        add(bwd, cat, performance.now() - t0);
        return r;
      };
    }
    for (const i of n.inputs) if (i.gradFn && !tags.has(i.gradFn)) stack.push(i.gradFn);
  }
}

for (const [proto, name, rule] of rules) {
  const p = proto as Record<string, (...a: unknown[]) => unknown>;
  const orig = p[name]!;
  p[name] = function (this: unknown, ...a: unknown[]) {
    const parent = frames.at(-1)?.cat;
    // What the parent made before this call (reachable from the arguments) is the parent's.
    if (parent) tagFrom(a, parent);
    const cat = rule(parent);
    const frame = { cat, child: 0 };
    frames.push(frame);
    const t0 = performance.now();
    const out = orig.apply(this, a);
    const ms = performance.now() - t0;
    frames.pop();
    add(fwd, cat, ms - frame.child);
    if (frames.length) frames.at(-1)!.child += ms;
    tagFrom(out, cat);
    return out;
  };
}
// The step's phases: the model's forward, the loss after it, the backward (its nodes, and the rest).
let phase = { forwardEnd: 0, backwardStart: 0, backwardEnd: 0 };
const modelForward = DeepseekV3ForCausalLM.prototype.forward;
DeepseekV3ForCausalLM.prototype.forward = function (...a: Parameters<typeof modelForward>) {
  const r = modelForward.apply(this, a);
  phase.forwardEnd = performance.now();
  return r;
};
const tensorBackward = Tensor.prototype.backward;
Tensor.prototype.backward = function (...a: Parameters<typeof tensorBackward>) {
  phase.backwardStart = performance.now();
  tensorBackward.apply(this, a);
  phase.backwardEnd = performance.now();
};

// Two parts of the lines above timed apart: AdamW's update and the backward's final collect of its dW products.
function timed(proto: object, name: string): { ms: number } {
  const acc = { ms: 0 };
  const p = proto as Record<string, (...a: unknown[]) => unknown>;
  const orig = p[name]!;
  p[name] = function (this: unknown, ...a: unknown[]) {
    const t0 = performance.now();
    const r = orig.apply(this, a);
    acc.ms += performance.now() - t0;
    return r;
  };
  return acc;
}
const adamw = timed(AdamW.prototype, 'stepUpdate');
const finish = timed(DeferredProducts.prototype, 'finish');

const { step } = benchStep(preset);
await step();
await step();
fwd.clear();
bwd.clear();
adamw.ms = 0;
finish.ms = 0;
let wall = 0;
let cpu = 0;
const rest = new Map<string, number>();
for (let i = 0; i < steps; i++) {
  phase = { forwardEnd: 0, backwardStart: 0, backwardEnd: 0 };
  const bwdBefore = [...bwd.values()].reduce((a, b) => a + b, 0);
  const r = await step();
  const t1 = performance.now();
  wall += r.wall * 1000;
  cpu += r.cpu * 1000;
  const nodes = [...bwd.values()].reduce((a, b) => a + b, 0) - bwdBefore;
  add(rest, 'cross-entropy + loss scaling (forward, outside modules)', phase.backwardStart - phase.forwardEnd);
  add(
    rest,
    'backward outside module nodes (CE backward, gradient sums, final dW wait)',
    phase.backwardEnd - phase.backwardStart - nodes,
  );
  add(rest, 'after backward (clip norm, read-back, AdamW, bias update, scope end)', t1 - phase.backwardEnd);
  add(rest, '  of which AdamW (stepUpdate)', adamw.ms);
  add(rest, '  of backward outside its nodes: the final wait for background dW', finish.ms);
  adamw.ms = 0;
  finish.ms = 0;
}
console.log(`${preset}: ${steps} steps, mean wall ${(wall / steps).toFixed(1)} ms, CPU ${(cpu / steps).toFixed(1)} ms`);
const rows = [
  ...[...fwd].map(([k, v]) => [k, 'fwd', v] as const),
  ...[...bwd].map(([k, v]) => [k, 'bwd', v] as const),
  ...[...rest].map(([k, v]) => [k, '', v] as const),
].sort((a, b) => b[2] - a[2]);
for (const [k, kind, v] of rows) console.log(`${(v / steps).toFixed(2).padStart(8)} ms  ${kind.padEnd(3)}  ${k}`);

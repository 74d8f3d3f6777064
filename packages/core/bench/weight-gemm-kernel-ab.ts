// The weight GEMM's kernel (gemmW_f32 / gemmW_bf16 / gemmW_fp8) on one thread, this tree's against another
// version's, both instantiated over one memory and run back to back in every repetition on the same
// operands (V3-mini's prefill shapes at --tokens rows: the routed experts, dense MLP, q_a; experts of 48
// rows each with their own weights and with one shared weight, which separates fetching the weights from
// the rows' count; one product of m = 12 … 512 rows); medians and minimums of ms per job, G multiply-adds/s,
// and whether the two outputs are bitwise equal.
// The other version: its sgemm-kernel.ts and weight-gemm-kernel.ts copied next to this tree's as
// sgemm-kernel-old.ts / weight-gemm-kernel-old.ts, their imports of each other renamed to match.
// FP8: this tree's kernel reads the block scales staged times 2^120 (stageFp8Scales); the other version
// gets them as they are (a version from before 2^120 was folded in) unless --old-folded.
// usage: npx tsx --conditions=@dsv3/source bench/weight-gemm-kernel-ab.ts [--old ../src/cpu/gemm/sgemm-kernel-old.ts]
//        [--reps 9] [--dtype bf16|f32|fp8] [--tokens 128] [--only NAME-PART]
import { parseArgs } from 'node:util';
import { stageFp8Scales } from '../src/cpu/gemm/fp8-weight.js';
import { buildSgemmModule, DEFAULT_KERNEL, workspaceBytes } from '../src/cpu/gemm/sgemm-kernel.js';
import { routedCounts, seededRandom } from './random-routing.js';

const { values } = parseArgs({
  options: {
    old: { type: 'string' },
    'old-folded': { type: 'boolean', default: false },
    reps: { type: 'string', default: '9' },
    dtype: { type: 'string', default: 'bf16' },
    only: { type: 'string', default: '' },
    tokens: { type: 'string', default: '128' },
  },
});
const kind = values.dtype;
if (kind !== 'f32' && kind !== 'bf16' && kind !== 'fp8')
  throw new Error(`weight-gemm-kernel-ab: --dtype is f32, bf16 or fp8, got ${kind}`);
const tokens = Number(values.tokens);
if (!(Number.isInteger(tokens) && tokens >= 1)) throw new Error(`weight-gemm-kernel-ab: --tokens ${values.tokens}`);
const reps = Number(values.reps);
type Kernel = (...args: number[]) => void;
const memory = new WebAssembly.Memory({ initial: 8192, maximum: 8192 });
const kernelOf = (build: typeof buildSgemmModule): Kernel => {
  const ex = new WebAssembly.Instance(new WebAssembly.Module(build(DEFAULT_KERNEL, false, 8192, false)), {
    env: { memory },
  }).exports as Record<string, Kernel>;
  return ex[`gemmW_${kind}`]!;
};
const versions: { name: string; run: Kernel; folded: boolean }[] = [
  { name: 'this', run: kernelOf(buildSgemmModule), folded: true },
];
if (values.old) {
  const old = (await import(values.old)) as { buildSgemmModule: typeof buildSgemmModule };
  versions.unshift({ name: 'old', run: kernelOf(old.buildSgemmModule), folded: values['old-folded'] });
}

const rand = seededRandom();
// Rows per expert of a prefill of `tokens` routed top-6 over 64 experts (uniformly at random); those of
// 4 rows or fewer take the GEMV in the model and are left out.
const routed = routedCounts(tokens, 64, 6, rand);
const experts = routed.filter((c) => c > 4);
/** name, n, k, rows of each product, whether every product has a weight of its own (else all share one) */
const shapes: [string, number, number, number[], boolean][] = [
  ['experts gate/up 256x1024', 256, 1024, experts, true],
  ['experts gate/up, one weight', 256, 1024, experts, false],
  ['experts down 1024x256', 1024, 256, experts, true],
  ['experts m=48 256x1024', 256, 1024, new Array<number>(64).fill(48), true],
  ['experts m=48, one weight', 256, 1024, new Array<number>(64).fill(48), false],
  ['m=12 256x1024', 256, 1024, [12], true],
  ['m=13 256x1024', 256, 1024, [13], true],
  ...[24, 48, 96, 192, 512].map((m): [string, number, number, number[], boolean] => [
    `m=${m} 256x1024`,
    256,
    1024,
    [m],
    true,
  ]),
  [`q_a ${tokens}x384x1024`, 384, 1024, [tokens], true],
  [`dense gate ${tokens}x2816x1024`, 2816, 1024, [tokens], true],
  [`dense down ${tokens}x1024x2816`, 1024, 2816, [tokens], true],
].filter(([name]) => (name as string).includes(values.only)) as [string, number, number, number[], boolean][];

const f32 = new Float32Array(memory.buffer);
const u16 = new Uint16Array(memory.buffer);
const u8 = new Uint8Array(memory.buffer);
const ws = 1 << 20;
let at = ws + workspaceBytes(DEFAULT_KERNEL);
const take = (bytes: number): number => {
  const a = at;
  at += Math.ceil(bytes / 64) * 64;
  return a;
};
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
console.log(`rows per expert (over 4): ${experts.join(' ')}`);
for (const [name, n, k, rows, own] of shapes) {
  const eb = kind === 'f32' ? 4 : kind === 'bf16' ? 2 : 1;
  const weights = own ? rows.length : 1;
  const w = take(n * k * eb * weights);
  for (let i = 0; i < n * k * weights; i++) {
    const b = Math.floor((rand() + 0.5) * 254);
    if (eb === 4) f32[w / 4 + i] = rand();
    else if (eb === 2) u16[w / 2 + i] = 0x3c00 + (b & 0x1ff) - 0x100;
    else u8[w + i] = (b & 0x7f) === 0x7f ? b - 1 : b;
  }
  const sCols = Math.ceil(k / 128);
  const sCount = Math.ceil(n / 128) * sCols;
  const raw = new Float32Array(sCount).fill(0.01);
  const scalesOf = versions.map(({ folded }) => {
    const s = take(sCount * 4);
    if (folded) stageFp8Scales(raw, sCount, f32, s / 4);
    else f32.set(raw, s / 4);
    return s;
  });
  const mMax = Math.max(...rows);
  const x = take(mMax * k * 4);
  for (let i = 0; i < mMax * k; i++) f32[x / 4 + i] = rand();
  const nPad = Math.ceil(n / 8) * 8;
  const cs = versions.map(() => take(rows.length * (mMax + 4) * nPad * 4));
  const job = (run: Kernel, c: number, s: number): number => {
    const t = performance.now();
    rows.forEach((m, q) => {
      const wq = w + (q % weights) * n * k * eb;
      run(0, m, 0, n, k, x, k * 4, 4, wq, k * eb, c + q * (mMax + 4) * nPad * 4, nPad * 4, ws, s, sCols * 4);
    });
    return performance.now() - t;
  };
  const ms = versions.map(() => [] as number[]);
  for (let r = -2; r < reps; r++)
    versions.forEach((v, i) => {
      const t = job(v.run, cs[i]!, scalesOf[i]!);
      if (r >= 0) ms[i]!.push(t);
    });
  const same = cs.every((c) =>
    rows.every((m, q) => {
      const o = q * (mMax + 4) * nPad;
      for (let i = 0; i < m * nPad; i++) if (!Object.is(f32[c / 4 + o + i], f32[cs[0]! / 4 + o + i])) return false;
      return true;
    }),
  );
  const macs = rows.reduce((t, m) => t + m * n * k, 0);
  const cells = versions.map((v, i) => {
    const [med, min] = [median(ms[i]!), Math.min(...ms[i]!)];
    return `${v.name} ${med.toFixed(2)} ms (min ${min.toFixed(2)}, ${(macs / min / 1e6).toFixed(1)} G/s)`;
  });
  const ratio =
    versions.length > 1
      ? `  old/this: median ${(median(ms[0]!) / median(ms[1]!)).toFixed(3)}x, min ${(Math.min(...ms[0]!) / Math.min(...ms[1]!)).toFixed(3)}x`
      : '';
  console.log(
    `${kind} ${name.padEnd(28)} ${String(rows.length).padStart(2)} products: ${cells.join('  ')}${ratio}  ${same ? 'bitwise equal' : 'OUTPUTS DIFFER'}`,
  );
}

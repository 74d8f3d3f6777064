// A/B of the f32 scatterAdd kernel (an indexSelect's / embedding's backward): an earlier indexing.ts
// (`git show REV:packages/core/src/cpu/indexing.ts > /tmp/indexing-old.ts`) against the current one,
// alternating call by call in one process at the tiny preset's training shapes; median µs per call
// of each and a bitwise check that they agree.
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/scatter-add-ab.ts /tmp/indexing-old.ts [--reps 201]
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { cpu, raw, wrap } from '../src/cpu/backend.js';
import * as current from '../src/cpu/indexing.js';
import { Rng } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { reps: { type: 'string', default: '201' } },
});
if (positionals.length !== 1) throw new Error('usage: scatter-add-ab.ts OLD_INDEXING.ts [--reps N]');
// The old file's relative imports resolve against this tree's src/cpu.
const here = fileURLToPath(new URL('../src/cpu/', import.meta.url));
const oldFile = join(mkdtempSync(join(tmpdir(), 'scatter-ab-')), 'indexing-old.ts');
writeFileSync(
  oldFile,
  readFileSync(positionals[0]!, 'utf8').replace(
    /from '(\.\.?\/[^']+)'/g,
    (_, p) => `from '${pathToFileURL(join(here, p)).href}'`,
  ),
);
const old = (await import(pathToFileURL(oldFile).href)) as typeof current;

const rng = new Rng(7);
// [x shape, ids]: the embedding's backward (vocab 258 x 128, 1024 tokens), a MoE layer's dispatch
// backward (1024 tokens x 128, 4096 routed rows) and its routing weights' backward (4096 x 1).
const cases: [number[], number][] = [
  [[258, 128], 1024],
  [[1024, 128], 4096],
  [[4096, 1], 4096],
];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const [shape, n] of cases) {
  const size = shape[0]! * shape[1]!;
  const x = wrap('f32', shape, new Float32Array(size));
  const ids = wrap(
    'i32',
    [n],
    Int32Array.from({ length: n }, () => rng.integer(0, shape[0]!)),
  );
  const src = wrap(
    'f32',
    [n, shape[1]!],
    Float32Array.from({ length: n * shape[1]! }, () => rng.normal()),
  );
  const run = (k: typeof current) => {
    const t0 = performance.now();
    const [out] = k.scatterAddKernel(cpu, [x, ids, src], { axis: 0, zeros: true });
    return [performance.now() - t0, out!] as const;
  };
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < Number(values.reps); i++) {
    const [a, oa] = run(old);
    const [b, ob] = run(current);
    const [ra, rb] = [raw(oa), raw(ob)];
    if (ra.some((v, j) => !Object.is(v, rb[j]))) throw new Error(`outputs differ at [${shape}]`);
    ta.push(a);
    tb.push(b);
  }
  const [a, b] = [median(ta) * 1000, median(tb) * 1000];
  console.log(
    `[${shape.join(', ')}] ${n} ids: old ${a.toFixed(0)} µs, new ${b.toFixed(0)} µs, ratio ${(a / b).toFixed(2)}`,
  );
}

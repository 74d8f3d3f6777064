// The mini preset's scaling table in one command: bench/parallel.ts once per layout (one process each,
// one after the other: a process keeps its peak heap, so layouts never share one), the 1-rank run's
// tokens/s handed to the others as their anchor, then overlap on vs off at ep=2; prints the table.
// Run it alone, under the big-memory lock (the 1-rank process peaks at ~15 GiB):
//   cd packages/train && flock /tmp/dsv3-bigmem.lock npx tsx --conditions=@dsv3/source bench/mini-scaling.ts
// Options: [--sequences 8] [--seq-len 32] [--steps 1] [--warmup 1] [--layouts 'dp=1;pp=2'] [--no-overlap]
//          [--checkpoint DIR] (default /work/ckpt/v3-mini when it exists; '' draws fresh weights) [--anchor T]
//          [--overlap-layout L] (default ep=2) [--malloc default|reuse] (default: default)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const opt = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
// the layouts of bench/mini-fit.ts that fit 24 GiB, by rank count (dp=1 first: it is the anchor)
const ALL = ['dp=1', 'ep=2', 'pp=2', 'pp=4', 'pp=2,ep=2', 'pp=8', 'pp=4,ep=2'];
const layouts = opt('layouts', ALL.join(';')).split(';');
const common = [
  '--preset',
  'mini',
  '--steps',
  opt('steps', '1'),
  '--warmup',
  opt('warmup', '1'),
  '--seq-len',
  opt('seq-len', '32'),
  '--sequences',
  opt('sequences', '8'),
];
// the weights: a mini checkpoint read by every rank (seconds) when there is one, else drawn from a seed
// (~1 CPU-minute per layout); ../shared/scripts/make-v3-mini.py writes one
const checkpoint = opt('checkpoint', existsSync('/work/ckpt/v3-mini/model.safetensors') ? '/work/ckpt/v3-mini' : '');
if (checkpoint) common.push('--checkpoint', checkpoint);
// --malloc default: the processes as started (glibc returns big freed buffers); reuse (bench/parallel.ts's
// default) keeps every freed byte, and 8 ranks' transient peaks then add up past 24 GiB
common.push('--malloc', opt('malloc', 'default'));
const bench = fileURLToPath(new URL('./parallel.ts', import.meta.url));

/** Runs bench/parallel.ts with `args`, echoing its output; returns the output and the wall seconds. */
function run(args: string[]): { out: string; secs: number } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [...process.execArgv, bench, ...common, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 26,
  });
  process.stdout.write(r.stdout);
  if (r.status !== 0) throw new Error(`bench/parallel.ts ${args.join(' ')} exited with ${r.status ?? r.signal}`);
  return { out: r.stdout, secs: (performance.now() - t0) / 1000 };
}

interface Row {
  layout: string;
  line: string;
  secs: number;
}
const rows: Row[] = [];
let anchor = opt('anchor', '');
for (const layout of layouts) {
  try {
    const { out, secs } = run(['--sections', 'scaling', '--layouts', layout, ...(anchor ? ['--anchor', anchor] : [])]);
    const line = out.split('\n').find((l) => / ranks /.test(l) && /tok\/s/.test(l));
    if (!line) throw new Error(`no result line for ${layout}`);
    if (layout === 'dp=1') anchor = /(\d+(?:\.\d+)?) tok\/s/.exec(line)![1]!;
    rows.push({ layout, line: line.trim(), secs });
  } catch (e) {
    // a layout that fails (e.g. killed for memory) is reported and the others still run
    rows.push({ layout, line: `${layout}: FAILED (${(e as Error).message})`, secs: 0 });
  }
}
let overlap: string[] = [];
if (!process.argv.includes('--no-overlap')) {
  try {
    const { out, secs } = run([
      '--sections',
      'overlap',
      '--rounds',
      '1',
      '--overlap-layout',
      opt('overlap-layout', 'ep=2'),
    ]);
    overlap = out.split('\n').filter((l) => /round \d+ overlap/.test(l));
    overlap.push(`  (${secs.toFixed(0)} s)`);
  } catch (e) {
    overlap = [`  FAILED (${(e as Error).message})`];
  }
}
console.log('\nmini scaling (each row one process; wall time includes start-up, model build and the warm-up):');
for (const r of rows) console.log(`${r.line}   [${r.secs.toFixed(0)} s]`);
if (overlap.length) console.log(`overlap of dispatch with the shared expert at ep=2:\n${overlap.join('\n')}`);

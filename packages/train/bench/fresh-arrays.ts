// Where a training step's fresh typed arrays come from: after warm-up steps, the typed-array and
// ArrayBuffer constructors are wrapped and every allocation of at least 16 KiB is summed by its call
// site (the three innermost frames) over the measured steps. What the free list hands out is not
// counted (it is no allocation), so this is what the garbage collector has to reclaim.
//   npx tsx --conditions=@dsv3/source bench/fresh-arrays.ts [tiny|mini] [--steps N] [--no-recycle]
import { setGemmThreads } from '@dsv3/core';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
const steps = Number(flag('--steps', '3'));
const MIN_BYTES = 16384;
setGemmThreads(1);
const { step } = benchStep(preset, { recycleActivations: !args.includes('--no-recycle') });
for (let i = 0; i < 3; i++) await step();

const bySite = new Map<string, number>();
const kinds = ['Float32Array', 'Float64Array', 'Int32Array', 'Uint16Array', 'Uint8Array', 'ArrayBuffer'] as const;
const g = globalThis as unknown as Record<string, unknown>;
const originals = kinds.map((kind) => g[kind]);
for (const kind of kinds) {
  g[kind] = new Proxy(g[kind] as new (...a: unknown[]) => ArrayBufferLike, {
    construct(target, argv) {
      const made = Reflect.construct(target, argv) as { byteLength: number };
      // a length argument: a new allocation (not a view on an existing buffer)
      if (typeof argv[0] === 'number' && made.byteLength >= MIN_BYTES) {
        const frames = (new Error().stack ?? '').split('\n').slice(2, 5);
        const site = `${kind} ${frames
          .map((l) =>
            l
              .trim()
              .replace(/^at /, '')
              .replace(/.*\/packages\//, ''),
          )
          .join(' < ')}`;
        bySite.set(site, (bySite.get(site) ?? 0) + made.byteLength);
      }
      return made;
    },
  });
}
for (let i = 0; i < steps; i++) await step();
kinds.forEach((kind, i) => {
  g[kind] = originals[i];
});
const total = [...bySite.values()].reduce((a, b) => a + b, 0);
console.log(
  `fresh arrays of >= ${MIN_BYTES / 1024} KiB: ${(total / steps / 1e6).toFixed(2)} MB per step (mean of ${steps})`,
);
for (const [site, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 12))
  console.log(`${(bytes / steps / 1e6).toFixed(2).padStart(7)}  ${site}`);

// combineAllInto of p - 1 received pieces into a segment, three ways, interleaved: pieces staged in
// ordinary memory for the whole chunk (16 segments: read back from memory, as without a window), in
// a window of two slots of ordinary memory (copied into the SIMD kernel's block first), and in a window
// of two slots in the kernel's own memory (read in place). One process; pin it (taskset -c 1). Prints
// ms per segment, the median of REPS.
//   npx tsx --conditions=@dsv3/source bench/reduce-staging.ts [segmentMiB=4] [pieces=3] [reps=30]
import { combineAllInto, giveKernelStaging, takeKernelStaging } from '../src/comm/reduce.js';

const segBytes = Number(process.argv[2] ?? 4) * 2 ** 20;
const pieces = Number(process.argv[3] ?? 3);
const reps = Number(process.argv[4] ?? 30);
const n = segBytes / 4;
// A window of two slots per piece, as the direct exchange uses them, and a destination larger than the
// cache (segments of a 256 MiB array, in turn), so the destination is read from memory as in the op.
const slots = 2;
const dest = new Float32Array(16 * n).fill(1);
const ordinary = Array.from({ length: pieces * slots }, () => new Float32Array(n).fill(0.5));
const chunk = Array.from({ length: pieces * 16 }, () => new Float32Array(n).fill(0.5));
const staging = takeKernelStaging(pieces * slots * segBytes);
if (!staging) throw new Error('no kernel staging (WebAssembly SIMD missing, or too large a window)');
const inKernel = Array.from(
  { length: pieces * slots },
  (_, i) => new Float32Array(staging.buffer, staging.byteOffset + i * segBytes, n),
);
for (const v of inKernel) v.fill(0.5);
const median = (x: number[]) => x.sort((a, b) => a - b)[x.length >> 1]!;
const times: Record<string, number[]> = { chunk: [], ordinary: [], kernel: [] };
let seg = 0;
for (let r = 0; r < reps; r++)
  for (const [name, srcs, count] of [
    ['chunk', chunk, 16],
    ['ordinary', ordinary, slots],
    ['kernel', inKernel, slots],
  ] as const) {
    const s = (r % count) * pieces;
    const acc = dest.subarray((seg % 16) * n, (seg % 16) * n + n);
    seg++;
    const t0 = performance.now();
    combineAllInto(acc, srcs.slice(s, s + pieces), 'sum');
    times[name]!.push(performance.now() - t0);
  }
giveKernelStaging(staging);
const c = median(times.chunk!);
const o = median(times.ordinary!);
const k = median(times.kernel!);
console.log(
  `${pieces} pieces of ${segBytes / 2 ** 20} MiB, ms per segment: whole chunk staged ${c.toFixed(2)}, ` +
    `window in ordinary memory ${o.toFixed(2)} (${(o / c).toFixed(2)}x), window in the kernel's memory ${k.toFixed(2)} (${(k / c).toFixed(2)}x)`,
);

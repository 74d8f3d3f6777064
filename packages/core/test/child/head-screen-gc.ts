// Child process of head-screen.test.ts (run with --expose-gc): a screened head's 8-bit copy goes back to
// the engine once the head's array is collected (the release registered for it must not keep it alive).
// Prints one JSON line.
import { allocResident, argmaxProduct, freeResident, gemmInfo, setGemmThreads } from '../../src/cpu/gemm/index.js';
import { collectGarbage } from './collect-garbage.js';

setGemmThreads(2);
const [n, k] = [4096, 256];
const f32 = new Float32Array(1),
  u32 = new Uint32Array(f32.buffer);
let w: Uint16Array | null = allocResident('bf16', n * k, false) as Uint16Array;
for (let i = 0; i < n * k; i++) {
  f32[0] = Math.sin(i * 0.73 + Math.cos(i * 0.37)) * 0.05;
  w[i] = u32[0]! >>> 16;
}
const x = Float32Array.from({ length: k }, (_, i) => Math.sin(i));
const best = argmaxProduct({ m: 1, n, k, x, w }, true)[0]!;
const screened = gemmInfo();
freeResident(w);
w = null;
const freed = gemmInfo().residentBytes; // the head's own block gone, its copy still held
await collectGarbage();
console.log(
  JSON.stringify({
    best,
    heads: screened.screenedHeads,
    decided: screened.screenedArgmaxes,
    freed,
    after: gemmInfo().residentBytes,
  }),
);

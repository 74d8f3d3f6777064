// Child process of resident-outputs.test.ts (run with --expose-gc): outputs takeF32 placed in the
// engine's memory go back to it when their arrays are collected; one the free list holds stays.
// Prints one JSON line.
import { gemmInfo, setGemmThreads } from '../../src/cpu/gemm/index.js';
import { CpuStorage } from '../../src/cpu/backend.js';
import { recycleStorage, takeF32 } from '../../src/cpu/pool.js';
import { isResidentOutput, residentOutputStats } from '../../src/cpu/resident-outputs.js';
import { collectGarbage } from './collect-garbage.js';

setGemmThreads(2);
const N = 1 << 16; // 256 KiB each
const before = { ...residentOutputStats(), used: gemmInfo().residentBytes };
let arrays: Float32Array[] | null = Array.from({ length: 20 }, () => takeF32(N).fill(1));
const allResident = arrays.every(isResidentOutput);
const held = residentOutputStats();
const kept = takeF32(N).fill(2);
recycleStorage(new CpuStorage(kept), 0); // now the free list's
arrays = null;
await collectGarbage();
const after = { ...residentOutputStats(), used: gemmInfo().residentBytes };
const reused = takeF32(N);
console.log(
  JSON.stringify({
    before,
    held,
    after,
    allResident,
    keptReused: reused === kept && isResidentOutput(reused),
  }),
);

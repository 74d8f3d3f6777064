// Places the GEMM engine's job scratch past 2 GiB of its memory, where task-table words holding byte
// addresses read negative as Int32 (a V3-mini model with f32 weights puts it there). The hole below is
// fresh pages that are never touched, so it costs address space, not memory.
import type { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';

const TWO_GIB = 2 ** 31;

/** Runs `body` with the next job's scratch at an address past 2 GiB; returns that address. */
export function withScratchPast2GiB(e: WasmGemm, body: () => void): number {
  const hole = e.arena.alloc(TWO_GIB);
  if (hole === null) throw new Error('test: the engine memory cannot grow past 2 GiB here');
  try {
    // larger than any earlier job's scratch, so it is placed anew, at the top (above the hole)
    const at = e.stage(96 << 20, 'test scratch');
    body();
    return at;
  } finally {
    e.arena.release(hole);
  }
}

// Work arrays kept from call to call, one per slot, grown as needed: for CPU paths that run once per
// layer per step (a decode step's attention, a prefill's experts), where fresh arrays of megabytes cost
// their zeroing, page faults and the full collections V8 runs under external-memory pressure. Large ones
// in the engine's memory go back at the end of a call (release), where the next block reuses their
// pages. The caller must write all it later reads, and must not keep a view past its call.
import { allocResident, freeResident, isResident } from './gemm/index.js';

/**
 * Arrays of more bytes than this go back at release(): a prefill's (megabytes a layer), not a decode
 * step's (reused every step).
 */
export const KEEP_WORK_BYTES = 1 << 20;

/**
 * The activations a prefill's MLP holds at once — a dense SwiGLU's gate and up rows, the routed experts'
 * gathered rows and activations — past which it runs in parts (rows of tokens; groups of experts),
 * each the products the whole would run, so the same bits: its memory stays bounded however long the
 * prompt (a 4096-token prefill of DeepSeek-V3's dense MLP would hold 576 MiB of gate and up rows).
 */
export const MLP_WORK_BYTES = 4 << 20;

/** f32 work arrays by slot. */
export class F32WorkArrays {
  private readonly arrays: (Float32Array | undefined)[] = [];

  /**
   * `resident`: the arrays live in the GEMM engine's memory where it has room (host memory where not),
   * so weight products read them as x and write them as y in place, without staging copies.
   */
  constructor(private readonly resident = false) {}

  /** Slot `slot` as exactly n float32s (a view of the kept array, contents undefined). */
  take(slot: number, n: number): Float32Array {
    const had = this.arrays[slot];
    if ((had?.length ?? -1) < n) {
      if (had && isResident(had)) freeResident(had);
      this.arrays[slot] =
        (this.resident ? (allocResident('f32', n, false) as Float32Array | null) : null) ?? new Float32Array(n);
    }
    return this.arrays[slot]!.subarray(0, n);
  }

  /**
   * Ends a call: the arrays over KEEP_WORK_BYTES in the engine's memory go back to it, where the next
   * op's blocks reuse their pages, so the memory's peak holds one path's large arrays at a time, not
   * every path's largest (a dense layer's SwiGLU rows beside the MoE's). Host arrays stay (see above).
   * The call's views must be dead.
   */
  release(): void {
    for (let slot = 0; slot < this.arrays.length; slot++) {
      const a = this.arrays[slot];
      if (!a || a.byteLength <= KEEP_WORK_BYTES || !isResident(a)) continue;
      freeResident(a);
      this.arrays[slot] = undefined;
    }
  }
}

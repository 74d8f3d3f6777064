// Work arrays kept from call to call, one per slot, grown and never shrunk: for CPU paths that run
// once per layer per step (a decode step's attention, a prefill's experts), where fresh arrays of
// megabytes cost their zeroing, page faults and the full collections V8 runs under external-memory
// pressure. The caller must write all it later reads, and must not keep a view past its call.
import { allocResident, freeResident, isResident } from './gemm/index.js';

/** f32 work arrays by slot. */
export class F32WorkArrays {
  private readonly arrays: Float32Array[] = [];

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
        (this.resident ? (allocResident('f32', n) as Float32Array | null) : null) ?? new Float32Array(n);
    }
    return this.arrays[slot]!.subarray(0, n);
  }
}

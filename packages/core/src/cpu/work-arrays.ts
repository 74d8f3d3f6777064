// Work arrays kept from call to call, one per slot, grown and never shrunk: for CPU paths that run
// once per layer per step (a decode step's attention, a prefill's experts), where fresh arrays of
// megabytes cost their zeroing, page faults and the full collections V8 runs under external-memory
// pressure. The caller must write all it later reads, and must not keep a view past its call.

/** f32 work arrays by slot. */
export class F32WorkArrays {
  private readonly arrays: Float32Array[] = [];

  /** Slot `slot` as exactly n float32s (a view of the kept array, contents undefined). */
  take(slot: number, n: number): Float32Array {
    if ((this.arrays[slot]?.length ?? -1) < n) this.arrays[slot] = new Float32Array(n);
    return this.arrays[slot]!.subarray(0, n);
  }
}

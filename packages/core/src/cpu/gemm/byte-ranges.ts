// The byte ranges a job reads, merged once, so each of its outputs is checked against all of them in
// O(log n): a job of P products asked every y about every x and weight (2P ranges), P² tests —
// ~20 ms of a 512-token prefill's calling thread for the experts' 128-product jobs.

/** A union of half-open byte ranges [start, end), queried for overlap with another range. */
export class ByteRanges {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  constructor(ranges: readonly (readonly [number, number])[]) {
    const sorted = ranges.filter(([a, b]) => b > a).sort((p, q) => p[0] - q[0]);
    for (const [a, b] of sorted) {
      const last = this.ends.length - 1;
      // Overlapping or touching ranges merge: the union, and so every answer, is unchanged.
      if (last >= 0 && a <= this.ends[last]!) this.ends[last] = Math.max(this.ends[last]!, b);
      else {
        this.starts.push(a);
        this.ends.push(b);
      }
    }
  }

  /** Whether [start, end) shares a byte with any range (an empty one never does). */
  overlaps(start: number, end: number): boolean {
    if (end <= start) return false;
    // The first merged range ending after `start` (ends ascend: the ranges are disjoint and sorted).
    let lo = 0,
      hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ends[mid]! <= start) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.starts.length && this.starts[lo]! < end;
  }
}

// Shared test helpers.

/** Relative L2 error and max absolute error of `got` against `want`. */
export function compare(got: ArrayLike<number>, want: ArrayLike<number>): { rel: number; maxAbs: number } {
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i]! - want[i]!;
    num += d * d;
    den += want[i]! * want[i]!;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return { rel: Math.sqrt(num / den), maxAbs };
}

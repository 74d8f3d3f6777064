// Shared test helpers.
import { relativeError } from '@dsv3/core/testing';

/** Relative L2 error and max absolute error of `got` against `want`. */
export function compare(got: ArrayLike<number>, want: ArrayLike<number>): { rel: number; maxAbs: number } {
  let maxAbs = 0;
  for (let i = 0; i < want.length; i++) maxAbs = Math.max(maxAbs, Math.abs(got[i]! - want[i]!));
  return { rel: relativeError(got, want), maxAbs };
}

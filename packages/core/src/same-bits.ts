// The tests' one check that two number arrays are equal bit for bit. It fails at once with a short
// report: a failing toEqual on a large array spends minutes in vitest's line diff of the two
// printouts (quadratic in the length), so a deliberately broken kernel timed out instead of failing.

export interface SameBitsOptions {
  /**
   * 'any' (default): any NaN equals any NaN, as toEqual (Object.is) has it; 'bits': NaN payloads
   * must match too (both arrays Float32Array, or both Float64Array). ±0 differ either way.
   */
  nan?: 'any' | 'bits';
  /** How many differing elements the report lists (default 5). */
  shown?: number;
}

type Numbers = ArrayLike<number>;

/** The element bits of a Float32Array / Float64Array as unsigned integers, else undefined. */
function bitsOf(a: Numbers): ArrayLike<number | bigint> | undefined {
  if (a instanceof Float32Array) return new Uint32Array(a.buffer, a.byteOffset, a.length);
  if (a instanceof Float64Array) return new BigUint64Array(a.buffer, a.byteOffset, a.length);
  return undefined;
}

/** Indices at which got and want differ (Object.is on the values, or their bits with nan 'bits'). */
export function bitMismatches(got: Numbers, want: Numbers, opts: SameBitsOptions = {}): number[] {
  if (got.length !== want.length)
    throw new RangeError(`bitMismatches: lengths differ (${got.length} vs ${want.length})`);
  const bad: number[] = [];
  if (opts.nan === 'bits') {
    const g = bitsOf(got);
    const w = bitsOf(want);
    if (!g || !w || got.constructor !== want.constructor)
      throw new TypeError("nan: 'bits' compares two Float32Arrays or two Float64Arrays");
    for (let i = 0; i < g.length; i++) if (g[i] !== w[i]) bad.push(i);
    return bad;
  }
  for (let i = 0; i < got.length; i++) if (!Object.is(got[i], want[i])) bad.push(i);
  return bad;
}

/** Element i as the report shows it: the value, and its bits for a float array's element. */
function shownValue(a: Numbers, i: number): string {
  const b = bitsOf(a)?.[i];
  return b === undefined
    ? `${a[i]}`
    : `${a[i]} (0x${b.toString(16).padStart(a instanceof Float32Array ? 8 : 16, '0')})`;
}

/**
 * Throws unless got and want have the same length and equal elements bit for bit (see
 * SameBitsOptions for NaN); the message gives the length, how many differ and the first few with
 * both values. `what` names the arrays in that message.
 */
export function expectSameBits(got: Numbers, want: Numbers, what = 'arrays', opts: SameBitsOptions = {}): void {
  if (got.length !== want.length) throw new Error(`${what}: lengths differ (got ${got.length}, want ${want.length})`);
  const bad = bitMismatches(got, want, opts);
  if (bad.length === 0) return;
  const shown = opts.shown ?? 5;
  const first = bad
    .slice(0, shown)
    .map((i) => `[${i}] got ${shownValue(got, i)}, want ${shownValue(want, i)}`)
    .join('; ');
  throw new Error(
    `${what}: ${bad.length} of ${got.length} elements differ: ${first}${bad.length > shown ? '; …' : ''}`,
  );
}

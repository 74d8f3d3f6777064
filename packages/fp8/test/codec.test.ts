import { describe, expect, it } from 'vitest';
import {
  E4M3_LUT,
  E4M3_MAX,
  E5M2_LUT,
  E5M2_MAX,
  decodeE4M3,
  decodeE4M3Array,
  decodeE5M2,
  decodeE5M2Array,
  decodeFp8,
  encodeE4M3,
  encodeE4M3Array,
  encodeE5M2,
  encodeE5M2Array,
  encodeFp8,
} from '../src/index';
import { f32, mismatches, u8 } from './goldens';

const FORMATS = [
  {
    name: 'e4m3',
    lut: E4M3_LUT,
    max: E4M3_MAX,
    enc: encodeE4M3,
    encA: encodeE4M3Array,
    dec: decodeE4M3,
    decA: decodeE4M3Array,
  },
  {
    name: 'e5m2',
    lut: E5M2_LUT,
    max: E5M2_MAX,
    enc: encodeE5M2,
    encA: encodeE5M2Array,
    dec: decodeE5M2,
    decA: decodeE5M2Array,
  },
] as const;

describe.each(FORMATS)('$name codec', (F) => {
  it('decodes all 256 codes bit-exactly (NaN codes as NaN, -0 as -0)', () => {
    const golden = f32(`fp8.${F.name}.decode`);
    expect(mismatches(F.lut, golden)).toEqual([]);
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    expect(mismatches(F.decA(all), golden)).toEqual([]);
    for (let b = 0; b < 256; b++) expect(Object.is(F.dec(b), golden[b])).toBe(true);
  });

  it('encodes every golden probe like torch (non-saturating mode)', () => {
    const x = f32(`fp8.${F.name}.encode.x`);
    const y = u8(`fp8.${F.name}.encode.y`);
    expect(x.length).toBeGreaterThan(9000);
    expect(mismatches(F.encA(x, { saturate: false }), y)).toEqual([]);
    const scalar = Uint8Array.from(x, (v) => F.enc(v, { saturate: false }));
    expect(mismatches(scalar, y)).toEqual([]);
  });

  it('saturating mode (default) matches the goldens in range and clamps out of range to ±max', () => {
    const x = f32(`fp8.${F.name}.encode.x`);
    const y = u8(`fp8.${F.name}.encode.y`);
    const q = F.encA(x);
    let inRange = 0;
    let outOfRange = 0;
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      if (Number.isNaN(v)) {
        expect(Number.isNaN(F.dec(q[i]!))).toBe(true);
      } else if (Math.abs(F.lut[y[i]!]!) <= F.max) {
        // torch gave a finite value: identical bytes
        expect(q[i]).toBe(y[i]);
        inRange++;
      } else {
        expect(F.dec(q[i]!)).toBe(Math.sign(v) * F.max);
        outOfRange++;
      }
    }
    expect(inRange).toBeGreaterThan(9000);
    if (F.name === 'e4m3') expect(outOfRange).toBeGreaterThan(0);
  });

  it('handles specials', () => {
    const sat = F.encA(new Float32Array([Infinity, -Infinity, NaN, 0, -0, 1e30, -1e30]));
    expect(Array.from(sat, (b) => F.dec(b))).toEqual([F.max, -F.max, NaN, 0, -0, F.max, -F.max]);
    const raw = F.encA(new Float32Array([Infinity, -Infinity, NaN, 1e30]), { saturate: false });
    const rawVals = Array.from(raw, (b) => F.dec(b));
    if (F.name === 'e4m3') {
      expect(Array.from(raw)).toEqual([0x7f, 0xff, 0x7f, 0x7f]);
    } else {
      expect(rawVals.slice(0, 2)).toEqual([Infinity, -Infinity]);
      expect(Number.isNaN(rawVals[2])).toBe(true);
      expect(rawVals[3]).toBe(Infinity);
    }
    // the sign of a NaN is kept; both modes
    expect(F.enc(-NaN) & 0x7f).toBe(0x7f);
    // array and scalar agree on a sweep of the whole f32 range
    const probe = new Float32Array(20000);
    for (let i = 0; i < probe.length; i++) probe[i] = (i % 2 ? -1 : 1) * 2 ** (-30 + (60 * i) / probe.length);
    for (const saturate of [true, false]) {
      const a = F.encA(probe, { saturate });
      const s = Uint8Array.from(probe, (v) => F.enc(v, { saturate }));
      expect(mismatches(a, s)).toEqual([]);
    }
  });

  it('round-trips every finite code', () => {
    for (let b = 0; b < 256; b++) {
      const v = F.lut[b]!;
      if (!Number.isFinite(v)) continue;
      expect(F.enc(v)).toBe(b);
    }
  });
});

describe('e4m3 rounding (reference doc examples)', () => {
  it('rounds to nearest, ties to even', () => {
    const cases: [number, number][] = [
      [1.0625, 1],
      [1.1875, 1.25],
      [17, 16],
      [19, 20],
      [2 ** -10, 0],
      [3 * 2 ** -11, 2 ** -9], // 0.75 * 2^-9 rounds up to the smallest subnormal
      [5 * 2 ** -10, 2 * 2 ** -9], // 2.5 * 2^-9: a subnormal tie goes to the even 2 * 2^-9
      [448, 448],
      [464, 448], // the tie above 448 goes to the even 448
    ];
    for (const [x, want] of cases) expect(decodeE4M3(encodeE4M3(x))).toBe(want);
    expect(encodeE4M3(465, { saturate: false })).toBe(0x7f);
    expect(encodeE4M3(464, { saturate: false })).toBe(0x7e);
    expect(encodeE4M3(465)).toBe(0x7e);
    expect(encodeE5M2(61440, { saturate: false })).toBe(0x7c);
    expect(encodeE5M2(61439, { saturate: false })).toBe(0x7b);
  });

  it('generic helpers dispatch on the format', () => {
    const x = new Float32Array([0.3, -2, 1000]);
    expect(Array.from(encodeFp8(x, 'e4m3'))).toEqual(Array.from(encodeE4M3Array(x)));
    expect(Array.from(encodeFp8(x, 'e5m2'))).toEqual(Array.from(encodeE5M2Array(x)));
    const q = encodeFp8(x, 'e5m2');
    expect(Array.from(decodeFp8(q, 'e5m2'))).toEqual(Array.from(decodeE5M2Array(q)));
  });

  it('rejects a too-small output buffer', () => {
    expect(() => encodeE4M3Array(new Float32Array(4), {}, new Uint8Array(2))).toThrow(/out has 2/);
    expect(() => decodeE4M3Array(new Uint8Array(4), new Float32Array(2))).toThrow(/out has 2/);
  });
});

// The direct-exchange all-reduce's window (AlgorithmOptions.windowSegments) on an in-memory mesh of
// ranks in one process: results bitwise equal to the f32 sum in the owner's order, and flow control
// checked message by message — a sender never pushes a piece before its owner has posted the
// receive for it, so every piece lands in its slot, however slow the owner is.
import { Rng } from '@dsv3/core';
import { describe, expect, it } from 'vitest';
import { DEFAULT_ALGORITHM_OPTIONS, allReduce, type Peers } from '../src/comm/algorithms.js';

interface Posted {
  into: Uint8Array;
  resolve(b: Uint8Array): void;
}

/** p ranks exchanging copies of their messages; records the pieces of data (reduce-scatter messages,
 *  step >> 16 = 0, non-empty) that arrive before their receive is posted. */
class Mesh {
  /** Per receiver, per "from:step": a posted receive, or a message that came first. */
  private readonly posted = new Map<string, Posted>();
  private readonly early = new Map<string, Uint8Array>();
  earlyPieces = 0;

  constructor(
    readonly p: number,
    /** Milliseconds rank r takes to take in each message it receives (a slow rank). */
    private readonly slowness: (rank: number) => number = () => 0,
  ) {}

  peers(rank: number): Peers {
    const key = (to: number, from: number, step: number) => `${to}<${from}:${step}`;
    return {
      rank,
      size: this.p,
      send: async (to, step, data) => {
        const k = key(to, rank, step);
        const copy = data.slice();
        await new Promise((r) => setTimeout(r, 0)); // the wire takes a turn of the event loop
        const waiting = this.posted.get(k);
        if (waiting) {
          this.posted.delete(k);
          if (waiting.into.byteLength !== copy.byteLength) throw new Error(`length mismatch at ${k}`);
          waiting.into.set(copy);
          waiting.resolve(waiting.into);
        } else {
          if (this.early.has(k)) throw new Error(`two messages for ${k}`);
          this.early.set(k, copy);
          if (step >>> 16 === 0 && copy.byteLength > 0) this.earlyPieces++;
        }
      },
      recv: (from, step, into) => {
        const k = key(rank, from, step);
        const target = into ?? new Uint8Array(0);
        const landed = new Promise<Uint8Array>((resolve) => {
          const got = this.early.get(k);
          if (!got) return this.posted.set(k, { into: target, resolve });
          this.early.delete(k);
          target.set(got);
          resolve(target);
        });
        const ms = this.slowness(rank);
        return ms > 0 ? landed.then((b) => new Promise((r) => setTimeout(() => r(b), ms))) : landed;
      },
    };
  }
}

function inputs(p: number, n: number, seed: number): Float32Array[] {
  return Array.from({ length: p }, (_, r) => {
    const rng = new Rng(seed * 131 + r);
    return Float32Array.from({ length: n }, () => 2 * rng.uniform() - 1);
  });
}

/** The f32 sum the direct exchange computes: chunk j reduced as x_j + x_j+1 + ... (mod p), rounded per addition. */
function ownerOrderSum(xs: Float32Array[], n: number): Float32Array {
  const p = xs.length;
  const out = new Float32Array(n);
  for (let j = 0; j < p; j++)
    for (let i = Math.floor((j * n) / p); i < Math.floor(((j + 1) * n) / p); i++) {
      let acc = xs[j]![i]!;
      for (let d = 1; d < p; d++) acc = Math.fround(acc + xs[(j + d) % p]![i]!);
      out[i] = acc;
    }
  return out;
}

/** Float64 sum, for the rounding bound. */
function exactSum(xs: Float32Array[], n: number): { sum: Float64Array; abs: Float64Array } {
  const sum = new Float64Array(n);
  const abs = new Float64Array(n);
  for (const x of xs)
    for (let i = 0; i < n; i++) {
      sum[i]! += x[i]!;
      abs[i]! += Math.abs(x[i]!);
    }
  return { sum, abs };
}

async function run(mesh: Mesh, xs: Float32Array[], segmentBytes: number, windowSegments: number) {
  const o = { ...DEFAULT_ALGORITHM_OPTIONS, smallAllReduceBytes: 0, segmentBytes, windowSegments };
  const bufs = xs.map((x) => x.slice());
  await Promise.all(bufs.map((b, r) => allReduce(mesh.peers(r), b, 'sum', o)));
  return bufs;
}

describe('direct exchange through a window of staging slots', () => {
  // Ragged lengths: not a multiple of the segment (64 elements here) nor of the group size.
  for (const [p, n, w] of [
    [2, 1_001, 1],
    [3, 2_050, 2],
    [4, 4_099, 2],
    [4, 4_099, 3],
    [5, 777, 1],
    [8, 9_000, 4],
  ] as const)
    it(`${p} ranks, ${n} elements, window ${w}: bitwise the owner-order sum, every piece posted before it arrives`, async () => {
      const xs = inputs(p, n, p * 1000 + n + w);
      const mesh = new Mesh(p);
      const got = await run(mesh, xs, 256, w);
      const want = ownerOrderSum(xs, n);
      const { sum, abs } = exactSum(xs, n);
      for (const g of got) {
        expect(Buffer.from(g.buffer).equals(Buffer.from(want.buffer))).toBe(true);
        let worst = 0; // error relative to the bound of an f32 sum of p terms in any order
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(g[i]! - sum[i]!) / (p * 2 ** -24 * abs[i]!));
        expect(worst).toBeLessThanOrEqual(1);
      }
      // Only empty READY messages (and all-gather segments, which land in place) may come before
      // their receive; no reduce-scatter piece does.
      expect(mesh.earlyPieces).toBe(0);
    });

  it('a slow receiver: its senders wait for its READYs instead of pushing pieces it has not posted', async () => {
    const p = 4;
    const n = 6_000; // 1,500 elements per chunk: 24 segments of 64 elements
    const xs = inputs(p, n, 77);
    const mesh = new Mesh(p, (r) => (r === 2 ? 2 : 0));
    const got = await run(mesh, xs, 256, 2);
    const want = ownerOrderSum(xs, n);
    for (const g of got) expect(Buffer.from(g.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    expect(mesh.earlyPieces).toBe(0);
  });
});

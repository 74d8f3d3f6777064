// Test utilities: seeded uniform samples (core's Rng) and a brute-force float64 reference router.
import { Rng } from '@dsv3/core';

/** Uniform samples in [0, 1) from core's seeded Rng. */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.uniform();
}

/** Standard normal samples (Box-Muller). */
export function normal(r: () => number): number {
  const u = Math.max(r(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
}

function combinations(n: number, m: number): number[][] {
  const out: number[][] = [];
  const cur: number[] = [];
  const rec = (start: number) => {
    if (cur.length === m) {
      out.push([...cur]);
      return;
    }
    for (let i = start; i < n; i++) {
      cur.push(i);
      rec(i + 1);
      cur.pop();
    }
  };
  rec(0);
  return out;
}

export interface RefConfig {
  E: number;
  k: number;
  nUnits: number;
  keepUnits: number;
  /** unit score = sum of the top `unitTop` choice scores, or the max for 'max'. */
  unitRule: 'max' | number;
  normTopkProb: boolean;
  scale: number;
  bias?: ArrayLike<number> | undefined;
}

/**
 * Brute force in float64: enumerate every subset of `keepUnits` units, keep the one with the largest
 * total unit score (first subset in lexicographic order on ties), then sort its experts fully.
 */
export function refRoute(scores: ArrayLike<number>, cfg: RefConfig): { indices: number[][]; weights: number[][] } {
  const { E, k, nUnits, keepUnits } = cfg;
  const T = scores.length / E;
  const size = E / nUnits;
  const subsets = combinations(nUnits, keepUnits);
  const indices: number[][] = [];
  const weights: number[][] = [];
  for (let t = 0; t < T; t++) {
    const s = Array.from({ length: E }, (_, e) => scores[t * E + e] as number);
    const c = s.map((v, e) => v + (cfg.bias ? (cfg.bias[e] as number) : 0));
    const unitScore = Array.from({ length: nUnits }, (_, u) => {
      const vals = c.slice(u * size, (u + 1) * size).sort((a, b) => b - a);
      if (cfg.unitRule === 'max') return vals[0] as number;
      return vals.slice(0, cfg.unitRule).reduce((a, b) => a + b, 0);
    });
    let best: number[] = subsets[0] as number[];
    let bestScore = -Infinity;
    for (const sub of subsets) {
      const sc = sub.reduce((a, u) => a + (unitScore[u] as number), 0);
      if (sc > bestScore) {
        bestScore = sc;
        best = sub;
      }
    }
    const cand: number[] = [];
    for (const u of best) for (let j = 0; j < size; j++) cand.push(u * size + j);
    cand.sort((a, b) => (c[b] as number) - (c[a] as number) || a - b);
    const idx = cand.slice(0, k);
    let w = idx.map((e) => s[e] as number);
    if (cfg.normTopkProb) {
      const sum = w.reduce((a, b) => a + b, 0);
      w = w.map((v) => v / sum);
    }
    indices.push(idx);
    weights.push(w.map((v) => v * cfg.scale));
  }
  return { indices, weights };
}

export function rows(a: ArrayLike<number>, width: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < a.length; i += width) out.push(Array.from({ length: width }, (_, j) => a[i + j] as number));
  return out;
}

// The expert benches' seeded draws: the same random numbers and routing on every run, so an old and a
// new tree time the same rows.

/** Random numbers in [-0.5, 0.5) from a 32-bit linear congruential generator. */
export function seededRandom(seed = 7): () => number {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

/** Tokens per expert when each of `tokens` tokens picks `k` distinct experts of `experts` at random. */
export function routedCounts(tokens: number, experts: number, k: number, rand: () => number): number[] {
  const counts = new Array<number>(experts).fill(0);
  for (let t = 0; t < tokens; t++) {
    const picked = new Set<number>();
    while (picked.size < k) picked.add(Math.floor((rand() + 0.5) * experts) % experts);
    for (const e of picked) counts[e]!++;
  }
  return counts;
}

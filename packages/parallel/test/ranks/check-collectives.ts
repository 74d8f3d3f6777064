// Run by every rank of a test job (any transport): each collective on seeded random data, checked
// against a sequential float64 reference that every rank computes from all ranks' inputs.
import { relativeError } from '@dsv3/core/testing';
import { Rng, decodeBf16, encodeBf16, fromRaw, type Tensor } from '@dsv3/core';
import { initProcessGroup, reportResult, type ProcessGroup } from '@dsv3/parallel';

const failures: string[] = [];
const fail = (what: string) => failures.push(what);

function values(seed: number, rank: number, n: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed * 7919 + rank);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());
}

function bf16(x: Float32Array): Float32Array {
  return decodeBf16(encodeBf16(x));
}

/** Worst |got - ref| relative to Σ|x| (the rounding-error bound of an f32 sum in any order is (p-1)·2^-24·Σ|x|). */
function sumError(got: ArrayLike<number>, ref: ArrayLike<number>, absSum: ArrayLike<number>, divisor: number): number {
  let worst = 0;
  for (let i = 0; i < ref.length; i++)
    worst = Math.max(worst, Math.abs(got[i]! - ref[i]!) / (absSum[i]! / divisor || 1e-30));
  return worst;
}

function reference(
  p: number,
  seed: number,
  n: number,
  op: string,
  round: (x: Float32Array) => Float32Array = (x) => x,
): Float64Array {
  const out = new Float64Array(n);
  const ins = Array.from({ length: p }, (_, r) =>
    round(op === 'prod' ? values(seed, r, n, 0.9, 1.1) : values(seed, r, n)),
  );
  for (let i = 0; i < n; i++) {
    let acc = ins[0]![i]!;
    for (let r = 1; r < p; r++) {
      const v = ins[r]![i]!;
      acc =
        op === 'max'
          ? Math.max(acc, v)
          : op === 'min'
            ? Math.min(acc, v)
            : op === 'prod'
              ? acc * v
              : op === 'abs'
                ? acc + Math.abs(v)
                : acc + v;
    }
    if (op === 'abs') acc = Math.abs(ins[0]![i]!) + acc - ins[0]![i]!;
    out[i] = op === 'avg' ? acc / p : acc;
  }
  return out;
}

/** Every rank holds bitwise the same array (checked by gathering them). */
async function sameEverywhere(pg: ProcessGroup, what: string, a: Float32Array): Promise<void> {
  const all = await pg.allGather(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).wait();
  const mine = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  for (let r = 0; r < pg.size; r++)
    for (let i = 0; i < mine.length; i++)
      if (all[r * mine.length + i] !== mine[i])
        return void fail(`${what}: rank ${r}'s result differs from rank ${pg.rank}'s`);
}

/** Worst error in units of the bound for an f32-accumulated sum rounded once to bf16: one bf16 ulp of
 *  the exact sum plus the f32 summation bound p·2^-24·Σ|x|. */
function bf16BoundRatio(got: Float32Array, ref: Float64Array, absSum: Float64Array, p: number): number {
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const ulp = 2 ** (Math.floor(Math.log2(Math.abs(ref[i]!) || 1e-30)) - 7);
    worst = Math.max(worst, Math.abs(got[i]! - ref[i]!) / (ulp + p * 2 ** -24 * absSum[i]!));
  }
  return worst;
}

async function checkAllReduce(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  for (const n of [1, 7, 1000, 50_001]) {
    for (const op of ['sum', 'avg', 'max', 'min', 'prod'] as const) {
      const seed = n + op.length;
      const lo = op === 'prod' ? 0.9 : -1;
      const hi = op === 'prod' ? 1.1 : 1;
      const host = values(seed, pg.rank, n, lo, hi);
      const got = await pg.allReduce(host, op).wait();
      if (got !== host) fail('allReduce on a host array must work in place');
      const ref = reference(p, seed, n, op);
      if (op === 'max' || op === 'min') {
        if (relativeError(got, ref) !== 0) fail(`allReduce f32 ${op} n=${n}: not exact`);
      } else if (op === 'prod') {
        const e = relativeError(got, ref);
        if (!(e <= p * 2 ** -24)) fail(`allReduce f32 prod n=${n}: relative error ${e}`);
      } else {
        const e = sumError(got, ref, reference(p, seed, n, 'abs'), op === 'avg' ? p : 1);
        if (!(e <= p * 2 ** -24))
          fail(`allReduce f32 ${op} n=${n}: error ${e} of the magnitude sum (bound ${p * 2 ** -24})`);
      }
      await sameEverywhere(pg, `allReduce f32 ${op} n=${n}`, got);
    }
    // bf16 tensors accumulate in f32 and round once: within one bf16 ulp of the exact sum.
    const seed = n + 100;
    const t = fromRaw('bf16', [n], encodeBf16(values(seed, pg.rank, n)));
    const out = (await pg.allReduce(t, 'sum').wait()) as Tensor;
    if (out.dtype !== 'bf16' || out.shape[0] !== n) fail(`allReduce bf16 returned ${out}`);
    const got = (await out.data()) as Float32Array;
    const ratio = bf16BoundRatio(got, reference(p, seed, n, 'sum', bf16), reference(p, seed, n, 'abs', bf16), p);
    if (!(ratio <= 1)) fail(`allReduce bf16 sum n=${n}: error ${ratio}x the bound`);
    await sameEverywhere(pg, `allReduce bf16 n=${n}`, got);
  }
}

async function checkReduceScatter(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  for (const m of [1, 5, 10_000]) {
    const seed = 300 + m;
    const input = values(seed, pg.rank, p * m);
    const copy = input.slice();
    const t = fromRaw('f32', [p * m], input);
    const out = (await pg.reduceScatter(t, 'sum').wait()) as Tensor;
    const ref = reference(p, seed, p * m, 'sum').subarray(pg.rank * m, (pg.rank + 1) * m);
    const abs = reference(p, seed, p * m, 'abs').subarray(pg.rank * m, (pg.rank + 1) * m);
    const e = sumError(await out.data(), ref, abs, 1);
    if (!(e <= p * 2 ** -24) || out.shape[0] !== m) fail(`reduceScatter f32 m=${m}: error ${e}, shape ${out.shape}`);
    const host = await pg.reduceScatter(input, 'avg').wait();
    const refAvg = reference(p, seed, p * m, 'avg').subarray(pg.rank * m, (pg.rank + 1) * m);
    if (!(sumError(host, refAvg, abs, p) <= p * 2 ** -24)) fail(`reduceScatter f32 avg m=${m} on a host array`);
    if (relativeError(input, copy) !== 0) fail('reduceScatter must leave its host input unchanged');
    const b = (await pg.reduceScatter(fromRaw('bf16', [p * m], encodeBf16(input)), 'sum').wait()) as Tensor;
    const mineOf = (x: Float64Array) => x.subarray(pg.rank * m, (pg.rank + 1) * m);
    const ratio = bf16BoundRatio(
      (await b.data()) as Float32Array,
      mineOf(reference(p, seed, p * m, 'sum', bf16)),
      mineOf(reference(p, seed, p * m, 'abs', bf16)),
      p,
    );
    if (!(ratio <= 1)) fail(`reduceScatter bf16 m=${m}: error ${ratio}x the bound`);
  }
}

async function checkAllGather(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  for (const rows of [0, 1, 3, 20_000]) {
    const seed = 500 + rows;
    const t = fromRaw('f32', [rows, 3], values(seed, pg.rank, rows * 3));
    const out = (await pg.allGather(t).wait()) as Tensor;
    if (out.shape.join() !== [p * rows, 3].join()) fail(`allGather shape ${out.shape}`);
    const want = new Float32Array(p * rows * 3);
    for (let r = 0; r < p; r++) want.set(values(seed, r, rows * 3), r * rows * 3);
    if (relativeError(await out.data(), want) !== 0) fail(`allGather f32 rows=${rows}: wrong data`);
    // FP8 payloads travel as raw bytes.
    const bytes = new Uint8Array(rows * 3).map((_, i) => (i * 31 + pg.rank * 7) & 255);
    const g = await pg.allGather(bytes, { dtype: 'fp8-e4m3' }).wait();
    for (let r = 0; r < p; r++)
      for (let i = 0; i < rows * 3; i++)
        if (g[r * rows * 3 + i] !== ((i * 31 + r * 7) & 255)) {
          fail(`allGather fp8 bytes rows=${rows}: wrong byte from rank ${r}`);
          r = p;
          break;
        }
  }
}

function splitsOf(seed: number, src: number, p: number): number[] {
  const rng = new Rng(seed * 31 + src);
  // Uneven, with zeros: every third destination (shifted per source) gets nothing.
  return Array.from({ length: p }, (_, dst) => ((dst + src) % 3 === 0 ? 0 : Math.floor(rng.uniform() * 5)));
}

async function checkAllToAll(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  // Seed 3's wide rows make blocks of up to 20 KB (many staging pieces where those are small).
  for (const [seed, width] of [
    [1, 4],
    [2, 4],
    [3, 1000],
  ] as const) {
    const sendSplits = splitsOf(seed, pg.rank, p);
    const rows = sendSplits.reduce((a, b) => a + b, 0);
    const data = (src: number) => values(700 + seed, src, splitsOf(seed, src, p).reduce((a, b) => a + b, 0) * width);
    const expectSplits = Array.from({ length: p }, (_, src) => splitsOf(seed, src, p)[pg.rank]!);
    const want: number[] = [];
    for (let src = 0; src < p; src++) {
      const s = splitsOf(seed, src, p);
      const start = s.slice(0, pg.rank).reduce((a, b) => a + b, 0);
      want.push(...data(src).subarray(start * width, (start + s[pg.rank]!) * width));
    }
    const t = fromRaw('f32', [rows, width], data(pg.rank));
    const given = seed !== 2 ? expectSplits : undefined; // seed 2 lets the ranks exchange the counts
    const { output, outputSplits } = await pg.allToAll(t, sendSplits, given).wait();
    if (outputSplits.join() !== expectSplits.join()) fail(`allToAll splits ${outputSplits} != ${expectSplits}`);
    if (output.shape.join() !== [want.length / width, width].join() || relativeError(await output.data(), want) !== 0)
      fail(`allToAll f32 seed=${seed}: wrong output`);
    const b = await pg.allToAll(fromRaw('bf16', [rows, width], encodeBf16(data(pg.rank))), sendSplits).wait();
    if (relativeError(await b.output.data(), bf16(Float32Array.from(want))) !== 0)
      fail(`allToAll bf16 seed=${seed}: wrong output`);
  }
  // Equal splits on a host array.
  const even = Float32Array.from({ length: p * 2 }, (_, i) => pg.rank * 1000 + i);
  const { output } = await pg.allToAll(even).wait();
  for (let src = 0; src < p; src++)
    for (let k = 0; k < 2; k++)
      if (output[src * 2 + k] !== src * 1000 + pg.rank * 2 + k) fail('allToAll equal splits: wrong output');
  // Into a given host array (as torch's all_to_all_single).
  const into = new Float32Array(p * 2);
  const given = await pg.allToAll(even, undefined, undefined, { out: into }).wait();
  if (given.output !== into || into.join() !== output.join()) fail('allToAll with out: wrong output');
  try {
    pg.allToAll(even, undefined, undefined, { out: new Int32Array(p * 2) });
    fail('allToAll accepted an out array of another type');
  } catch (e) {
    if (!/out must be a Float32Array like the input/.test((e as Error).message)) fail(`allToAll out: ${e}`);
  }
}

async function checkBroadcastP2P(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  for (const root of [0, p - 1]) {
    for (const n of [3, 50_000]) {
      const buf = pg.rank === root ? values(900 + n, root, n) : new Float32Array(n);
      await pg.broadcast(buf, root).wait();
      if (relativeError(buf, values(900 + n, root, n)) !== 0) fail(`broadcast root=${root} n=${n}: wrong data`);
    }
  }
  if (p > 1) {
    const right = (pg.rank + 1) % p;
    const left = (pg.rank + p - 1) % p;
    const s1 = pg.send(fromRaw('f32', [2, 2], values(1000, pg.rank, 4)), right);
    const s2 = pg.send(values(1001, pg.rank, 5), right, 7);
    const r2 = pg.recv(new Float32Array(5), left, 7); // tags match independently of order
    const r1 = pg.recv(fromRaw('f32', [2, 2], new Float32Array(4)), left);
    const [a, b] = await Promise.all([r1.wait(), r2.wait(), s1.wait(), s2.wait()]);
    if (relativeError(await (a as Tensor).data(), values(1000, left, 4)) !== 0) fail('send/recv tensor: wrong data');
    if (relativeError(b as Float32Array, values(1001, left, 5)) !== 0) fail('send/recv tagged: wrong data');
  }
  await pg.barrier().wait();
}

async function checkOverlapAndGroups(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  // Several operations in flight at once, waited in reverse order.
  const a = values(1100, pg.rank, 5000);
  const w1 = pg.allReduce(a, 'sum');
  const w2 = pg.allGather(values(1101, pg.rank, 10));
  const w3 = pg.allReduce(values(1102, pg.rank, 3), 'max');
  await w3.wait();
  const g = await w2.wait();
  await w1.wait();
  if (
    sumError(a, reference(p, 1100, 5000, 'sum'), reference(p, 1100, 5000, 'abs'), 1) > p * 2 ** -24 ||
    g.length !== 10 * p
  )
    fail('overlapped operations: wrong results');
  if (!(w1.seq < w2.seq && w2.seq < w3.seq && w1.op === 'ALLREDUCE'))
    fail('Work handles must carry op names and increasing sequence numbers');
  // Sub-groups: evens and odds (created in the same order on every rank), then one of all but rank 0.
  const evens = Array.from({ length: p }, (_, i) => i).filter((i) => i % 2 === 0);
  const odds = Array.from({ length: p }, (_, i) => i).filter((i) => i % 2 === 1);
  const mine = pg.newGroups(odds.length ? [evens, odds] : [evens]);
  if (!mine) return void fail('newGroups returned no group for this rank');
  const members = pg.rank % 2 === 0 ? evens : odds;
  const x = new Float64Array([pg.rank, 1]);
  await mine.allReduce(x, 'sum').wait();
  if (x[0] !== members.reduce((s, r) => s + r, 0) || x[1] !== members.length || mine.rank !== members.indexOf(pg.rank))
    fail(`sub-group allReduce: got ${x}`);
  const rest = p > 2 ? pg.newGroup(Array.from({ length: p - 1 }, (_, i) => p - 1 - i)) : null; // reversed order
  if (rest) {
    const v = await rest.allGather(new Int32Array([pg.rank])).wait();
    if (v.join() !== Array.from({ length: p - 1 }, (_, i) => p - 1 - i).join())
      fail(`reversed sub-group allGather: ${v}`);
  } else if (p > 2 && pg.rank !== 0) fail('newGroup returned null for a member');
}

/**
 * The first element where `got` differs bitwise from the direct-exchange all-reduce's f32 sum (tcp):
 * chunk j of the p chunks is summed on rank j as x_j + x_{j+1} + ... + x_{j+p-1} (ranks mod p),
 * rounded to f32 after each addition; -1 if none. A change of that order (or a lost piece) shows here
 * even where the rounding-error bound above cannot see it.
 */
function directOrderMismatch(got: Float32Array, p: number, seed: number, n: number): number {
  const ins = Array.from({ length: p }, (_, r) => values(seed, r, n));
  for (let j = 0; j < p; j++)
    for (let i = Math.floor((j * n) / p); i < Math.floor(((j + 1) * n) / p); i++) {
      let acc = ins[j]![i]!;
      for (let d = 1; d < p; d++) acc = Math.fround(acc + ins[(j + d) % p]![i]!);
      if (!Object.is(acc, got[i])) return i;
    }
  return -1;
}

/** Blocks this rank's event loop for `ms` (a rank slow to serve its links). */
function stall(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until);
}

/**
 * Messages of many segments and larger than the tcp link's read buffer (read in place), all-reduced
 * by direct exchange and on the ring: ragged lengths (not a multiple of the segment or of the group
 * size), chunks of whole segments and one element more, f32 and bf16, two segment sizes, a rank
 * entering late (its peers' data arrive before its receives are posted), a reduce-scatter, and
 * an all-to-all of large uneven blocks with empty ones.
 */
async function checkLargeMessages(pg: ProcessGroup): Promise<void> {
  const p = pg.size;
  const all = Array.from({ length: p }, (_, i) => i);
  const wide = pg.newGroup(all, { algorithm: { segmentBytes: 256 << 10 } })!;
  // The same all-reduces on the pipelined ring (groups of more ranks than directAllReduceMaxRanks).
  const ring = pg.newGroup(all, { algorithm: { segmentBytes: 256 << 10, directAllReduceMaxRanks: 0 } })!;
  // The direct exchange through a window of staging slots per peer (senders wait for READY messages).
  const window2 = pg.newGroup(all, { algorithm: { segmentBytes: 64 << 10, windowSegments: 2 } })!;
  const window1 = pg.newGroup(all, { algorithm: { segmentBytes: 64 << 10, windowSegments: 1 } })!;
  // Chunks of exactly two 256 KiB segments, and one element more (a last segment of one element).
  const exact = p * 2 * (64 << 10);
  for (const [g, n, late] of [
    [pg, 333_337, -1],
    [wide, 333_337, 0],
    [wide, 262_147, p - 1],
    [wide, exact, -1],
    [wide, exact + 1, -1],
    [ring, 333_337, 0],
    [ring, 262_147, p - 1],
    [ring, exact + 1, -1],
    [window2, 333_337, 0],
    [window2, 262_147, p - 1],
    [window2, exact + 1, -1],
    [window1, 333_337, p - 1],
    [window1, exact, -1],
  ] as const) {
    // The window is the direct exchange's (algorithms.ts): local and mpi all-reduces do not run it.
    if ((g === window1 || g === window2) && pg.backend !== 'tcp') continue;
    const seed = 1200 + n + g.id;
    if (g.rank === late) await new Promise((r) => setTimeout(r, 300));
    const host = values(seed, g.rank, n);
    const work = g.allReduce(host, 'sum');
    // A receiver that stalls mid-operation (its event loop blocked while its peers wait for READYs).
    if (g === window1 && g.rank === late) setTimeout(() => stall(200), 5);
    await work.wait();
    const e = sumError(host, reference(p, seed, n, 'sum'), reference(p, seed, n, 'abs'), 1);
    if (!(e <= p * 2 ** -24)) fail(`large allReduce f32 n=${n} group ${g.id}: error ${e} (bound ${p * 2 ** -24})`);
    await sameEverywhere(g, `large allReduce f32 n=${n} group ${g.id}`, host);
    if ((g === wide || g === window2 || g === window1) && pg.backend === 'tcp') {
      const bad = directOrderMismatch(host, p, seed, n);
      if (bad >= 0)
        fail(`large allReduce f32 n=${n}: element ${bad} is not the direct exchange's f32 sum in its order`);
    }
  }
  const n = 200_003;
  for (const g of [wide, ring]) {
    const t = fromRaw('bf16', [n], encodeBf16(values(1300, pg.rank, n)));
    const got = (await (await g.allReduce(t, 'sum').wait()).data()) as Float32Array;
    const ratio = bf16BoundRatio(got, reference(p, 1300, n, 'sum', bf16), reference(p, 1300, n, 'abs', bf16), p);
    if (!(ratio <= 1)) fail(`large allReduce bf16 n=${n} group ${g.id}: error ${ratio}x the bound`);
    await sameEverywhere(g, `large allReduce bf16 n=${n} group ${g.id}`, got);
  }
  const m = 70_001;
  const rs = await wide.reduceScatter(values(1400, pg.rank, p * m), 'sum').wait();
  const mine = (x: Float64Array) => x.subarray(pg.rank * m, (pg.rank + 1) * m);
  const e = sumError(rs, mine(reference(p, 1400, p * m, 'sum')), mine(reference(p, 1400, p * m, 'abs')), 1);
  if (!(e <= p * 2 ** -24)) fail(`large reduceScatter m=${m}: error ${e}`);
  // Two all-reduces of one large shape in flight at once with collectives between and after them, one
  // rank late for the last (mpi: the second finds the shape's standing request busy and waits, and the
  // collectives called after it wait behind it, so every rank starts them in call order).
  const k = 300_007;
  const inputs = [1600, 1601, 1602].map((seed) => values(seed, pg.rank, k));
  const first = pg.allReduce(inputs[0]!, 'sum');
  const second = pg.allReduce(inputs[1]!, 'sum');
  const between = pg.allGather(new Int32Array([pg.rank]));
  if (pg.rank === 0) await new Promise((r) => setTimeout(r, 100));
  const third = pg.allReduce(inputs[2]!, 'sum');
  const ranks = await between.wait();
  await Promise.all([first.wait(), second.wait(), third.wait()]);
  if (ranks.join() !== all.join()) fail(`allGather between large allReduces: ${ranks}`);
  for (const [i, seed] of [1600, 1601, 1602].entries()) {
    const e = sumError(inputs[i]!, reference(p, seed, k, 'sum'), reference(p, seed, k, 'abs'), 1);
    if (!(e <= p * 2 ** -24)) fail(`overlapped large allReduce ${i}: error ${e} (bound ${p * 2 ** -24})`);
  }
  // Two large messages to the right neighbour, received in the opposite order: a tcp link holds the
  // first at its header waiting for its receive, which only the second (queued behind it) unblocks;
  // after its hold limit the link reads the first into a buffer of its own and the second in place.
  const right = (pg.rank + 1) % p;
  const left = (pg.rank + p - 1) % p;
  const big = 100_003;
  const sends = [pg.send(values(1700, pg.rank, big), right, 11), pg.send(values(1701, pg.rank, big), right, 12)];
  const later = await pg.recv(new Float32Array(big), left, 12).wait();
  const earlier = await pg.recv(new Float32Array(big), left, 11).wait();
  await Promise.all(sends.map((w) => w.wait()));
  if (relativeError(earlier, values(1700, left, big)) !== 0 || relativeError(later, values(1701, left, big)) !== 0)
    fail('large send/recv received in the opposite order: wrong data');
  // Blocks of up to 4 rows of 20,000 f32 (320 KB), some empty.
  const width = 20_000;
  const sendSplits = splitsOf(4, pg.rank, p);
  const input = values(1500, pg.rank, sendSplits.reduce((a, b) => a + b, 0) * width);
  const recvSplits = all.map((src) => splitsOf(4, src, p)[pg.rank]!);
  const out = new Float32Array(recvSplits.reduce((a, b) => a + b, 0) * width);
  const { output } = await wide
    .allToAll(
      input,
      sendSplits.map((c) => c * width),
      recvSplits.map((c) => c * width),
      { out },
    )
    .wait();
  const want: number[] = [];
  for (const src of all) {
    const s = splitsOf(4, src, p);
    const start = s.slice(0, pg.rank).reduce((a, b) => a + b, 0) * width;
    want.push(...values(1500, src, s.reduce((a, b) => a + b, 0) * width).subarray(start, start + s[pg.rank]! * width));
  }
  if (output !== out || relativeError(out, want) !== 0) fail('large allToAll into out: wrong output');
}

const pg = await initProcessGroup({ timeoutMs: 120_000, algorithm: { segmentBytes: 64 << 10 } });
for (const [name, check] of Object.entries({
  checkAllReduce,
  checkReduceScatter,
  checkAllGather,
  checkAllToAll,
  checkBroadcastP2P,
  checkOverlapAndGroups,
  checkLargeMessages,
})) {
  try {
    await check(pg);
  } catch (e) {
    fail(`${name} threw: ${(e as Error).stack ?? e}`);
  }
}
await pg.barrier().wait();
await pg.destroy();
const result = {
  rank: pg.rank,
  size: pg.size,
  backend: pg.backend,
  ...(pg.links.length ? { links: pg.links } : {}),
  failures,
};
reportResult(result);
console.log(`DSV3_RESULT ${JSON.stringify(result)}`);
if (failures.length) process.exitCode = 1;

// Collective algorithms over tagged point-to-point messages between the ranks of one group.
// Large messages move in segments (so a reduction overlaps the transfer of the next segment);
// every rank ends with bitwise the same result because each element is reduced in one order.
import { giveScratch, takeScratch } from './buffers.js';
import { combineAllInto, combineInto, type ReduceOp, type WorkArray } from './reduce.js';

/** What an algorithm sees of its group: group-local ranks and messages tagged by step. */
export interface Peers {
  readonly rank: number;
  readonly size: number;
  send(to: number, step: number, data: Uint8Array): Promise<void>;
  recv(from: number, step: number, into?: Uint8Array): Promise<Uint8Array>;
}

export interface AlgorithmOptions {
  /** Segment size in bytes (a multiple of 8). 4 MiB by default: against 1 MiB, back-to-back 4-rank
   *  all-reduces of 64 / 256 MiB used 22-30% / 21-25% less CPU per rank (16 MiB: -2% to 22%; 2 ranks,
   *  64 MiB: 11-15%) and were no slower (docs/benchmarks.md, Collectives, seventh session). */
  segmentBytes: number;
  /** All-reduces up to this many bytes use recursive doubling; larger ones direct exchange or a ring. */
  smallAllReduceBytes: number;
  /** Larger all-reduces in groups of up to this many ranks use direct exchange; in larger groups, the
   *  pipelined ring (whose per-rank connections stay at two). */
  directAllReduceMaxRanks: number;
  /** Staging slots per peer in the direct exchange (segment k in slot k mod W, senders held back by
   *  READY messages so they never overwrite a slot not yet reduced); 0, the default, stages the whole
   *  chunk. A window bounds the staging memory ((p - 1) W segments instead of (p - 1) chunks) but costs
   *  time: 4 ranks, 256 MiB, W = 2 or 4 against 0 took 14-33% more wall and 1-11% more CPU per
   *  operation (docs/benchmarks.md, Collectives, ninth session). */
  windowSegments: number;
}

export const DEFAULT_ALGORITHM_OPTIONS: AlgorithmOptions = {
  segmentBytes: 4 << 20,
  smallAllReduceBytes: 64 << 10,
  directAllReduceMaxRanks: 8,
  windowSegments: 0,
};

const mod = (a: number, p: number): number => ((a % p) + p) % p;

export function bytesOf(a: ArrayBufferView, startByte = 0, endByte = a.byteLength): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset + startByte, endByte - startByte);
}

/** Sends `data` as segments tagged (step << 16 | k). */
function sendSegmented(P: Peers, to: number, step: number, data: Uint8Array, seg: number): Promise<void> {
  const n = Math.max(1, Math.ceil(data.byteLength / seg));
  if (n > 0xffff)
    throw new RangeError(`message of ${data.byteLength} bytes needs more than 65535 segments of ${seg} bytes`);
  const sends: Promise<void>[] = [];
  for (let k = 0; k < n; k++)
    sends.push(P.send(to, (step << 16) | k, data.subarray(k * seg, Math.min(data.byteLength, (k + 1) * seg))));
  return Promise.all(sends).then(() => undefined);
}

/** Receives segments into `into`, calling onSegment(startByte, endByte) as each one lands. */
function recvSegmented(
  P: Peers,
  from: number,
  step: number,
  into: Uint8Array,
  seg: number,
  onSegment?: (start: number, end: number) => void | Promise<void>,
): Promise<void> {
  const n = Math.max(1, Math.ceil(into.byteLength / seg));
  const recvs: Promise<void>[] = [];
  for (let k = 0; k < n; k++) {
    const s = k * seg;
    const e = Math.min(into.byteLength, s + seg);
    recvs.push(P.recv(from, (step << 16) | k, into.subarray(s, e)).then(() => onSegment?.(s, e)));
  }
  return Promise.all(recvs).then(() => undefined);
}

/** Element range of chunk i when n elements are split over p ranks as evenly as possible. */
export function chunkRange(n: number, p: number, i: number): [number, number] {
  return [Math.floor((i * n) / p), Math.floor(((i + 1) * n) / p)];
}

/** `p`, marked handled: its failure is reported where it is awaited later, and a failure elsewhere
 *  meanwhile must not make it an unhandled rejection (which ends the process). */
function handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/** Byte range of segment k of a chunk [start, end) (empty past the chunk's end). */
function segmentOf(start: number, end: number, k: number, seg: number): [number, number] {
  return [Math.min(end, start + k * seg), Math.min(end, start + (k + 1) * seg)];
}

/**
 * How the segmented all-reduces cut `a` over p ranks: chunk c's byte range (c taken mod p), the
 * largest chunk, the segment size and the number of segments per chunk (tags hold 16 bits of it).
 */
function segmentPlan(a: WorkArray, p: number, o: AlgorithmOptions) {
  const E = a.BYTES_PER_ELEMENT;
  const chunk = (c: number) => chunkRange(a.length, p, mod(c, p)).map((x) => x * E) as [number, number];
  let maxChunk = 0;
  for (let c = 0; c < p; c++) maxChunk = Math.max(maxChunk, chunk(c)[1] - chunk(c)[0]);
  const seg = o.segmentBytes;
  const segments = Math.max(1, Math.ceil(maxChunk / seg));
  if (segments > 0xffff)
    throw new RangeError(`message of ${a.byteLength} bytes needs more than 65535 segments of ${seg} bytes per chunk`);
  return { E, bytes: bytesOf(a), chunk, maxChunk, seg, segments };
}

/**
 * The pipelined ring over `a` cut into P.size chunks: reduce-scatter (afterwards chunk P.rank holds
 * the reduction over all ranks), then, with `gather`, all-gather (every rank holds every chunk).
 * Each chunk is cut into segments and every segment travels the ring on its own: a segment is
 * forwarded as soon as it has been received and reduced, whatever the other segments are doing, so
 * sends, receives and reductions of different segments overlap across ring steps instead of every
 * rank waiting for a whole step. Every receive is posted before the first byte can arrive (each
 * reduce-scatter step has its own staging area; the all-gather lands in `a` itself), so the
 * transport reads each payload straight into place. Each element is reduced along one path, so
 * every rank ends with bitwise the same values.
 */
async function pipelinedRing(P: Peers, a: WorkArray, op: ReduceOp, o: AlgorithmOptions, gather: boolean) {
  const p = P.size;
  const r = P.rank;
  if (p === 1) return;
  const { E, bytes, chunk, maxChunk, seg, segments } = segmentPlan(a, p, o);
  const right = mod(r + 1, p);
  const left = mod(r - 1, p);
  // Reduce-scatter step s receives chunk r-s-2 from the left into staging area s.
  const scratch = takeScratch((p - 1) * maxChunk);
  const staging = new Uint8Array(scratch, 0, (p - 1) * maxChunk);
  const tag = (step: number, k: number) => (step << 16) | k;
  const steps = gather ? 2 * (p - 1) : p - 1;
  // Step s sends chunk r-s-1 to the right and receives chunk r-s-2 from the left (mod p), in both
  // phases; what arrives at step s is sent on at step s + 1.
  const chain = async (k: number): Promise<void> => {
    // Post this segment's receives for every step first.
    const arrivals: Promise<Uint8Array>[] = [];
    for (let s = 0; s < steps; s++) {
      const [cs, ce] = chunk(r - s - 2);
      const [b0, b1] = segmentOf(cs, ce, k, seg);
      const into =
        s < p - 1 ? staging.subarray(s * maxChunk + (b0 - cs), s * maxChunk + (b1 - cs)) : bytes.subarray(b0, b1);
      arrivals.push(handled(P.recv(left, tag(s, k), into)));
    }
    const sends: Promise<void>[] = [];
    const send = (s: number) => {
      const [b0, b1] = segmentOf(...chunk(r - s - 1), k, seg);
      sends.push(handled(P.send(right, tag(s, k), bytes.subarray(b0, b1))));
    };
    send(0);
    for (let s = 0; s < steps; s++) {
      const got = await arrivals[s]!;
      const c = r - s - 2;
      if (s < p - 1) {
        const [b0, b1] = segmentOf(...chunk(c), k, seg);
        const src = new (a.constructor as new (b: ArrayBufferLike, o: number, n: number) => WorkArray)(
          got.buffer,
          got.byteOffset,
          (b1 - b0) / E,
        );
        combineInto(a.subarray(b0 / E, b1 / E), src, op);
      }
      // What was just reduced (or gathered) moves on; at s = p - 2 that is the finished chunk r.
      if (s + 1 < steps) send(s + 1);
    }
    await Promise.all(sends);
  };
  const chains: Promise<void>[] = [];
  for (let k = 0; k < segments; k++) chains.push(chain(k));
  await Promise.all(chains);
  giveScratch(scratch);
}

/**
 * All-reduce by direct exchange (reduce-scatter and all-gather each in one hop): rank j owns chunk j;
 * every rank sends each segment of chunk j straight to rank j, which reduces the p - 1 pieces into
 * its own (always in the order j+1, j+2, ... so the result does not depend on arrival order) and
 * sends the finished segment straight to every other rank. The bytes each rank moves are the ring's,
 * but a segment waits for two hops instead of 2(p-1): with more ranks than cores (or a descheduled
 * peer) the ring's chain of wake-ups, not the bytes, was what a large all-reduce waited on. Chunk j
 * is reduced only on rank j, so every rank ends with bitwise the same values.
 *
 * With `windowSegments` W > 0 the pieces land in a window of W staging slots per peer (segment k in
 * slot k mod W) instead of a staging area of the whole chunk: a sender may send segment k >= W only
 * once the owner has posted its receive, which the owner announces with an empty READY message after
 * reducing segment k - W, so every piece still lands in place and a sender never runs more than W
 * segments ahead. All-gather segments land in `a` itself and need no window.
 */
async function directAllReduce(P: Peers, a: WorkArray, op: ReduceOp, o: AlgorithmOptions): Promise<void> {
  const p = P.size;
  const r = P.rank;
  const { E, bytes, chunk, maxChunk, seg, segments } = segmentPlan(a, p, o);
  const W = Math.min(segments, o.windowSegments > 0 ? o.windowSegments : segments);
  // Slot (d - 1) * W + k mod W holds what rank r + d sends of segment k of chunk r.
  const slot = Math.min(seg, maxChunk);
  const staging = new Uint8Array(takeScratch((p - 1) * W * slot), 0, (p - 1) * W * slot);
  const REDUCE = 0;
  const GATHER = 1;
  const READY = 2;
  const tag = (phase: number, k: number) => (phase << 16) | k;
  const [ms, me] = chunk(r);
  const View = a.constructor as new (b: ArrayBufferLike, o: number, n: number) => WorkArray;
  const empty = new Uint8Array(0);
  const pending: Promise<void>[] = [];
  // Every all-gather receive lands in place, so all are posted at once.
  for (let k = 0; k < segments; k++)
    for (let d = 1; d < p; d++) {
      const from = mod(r + d, p);
      const [g0, g1] = segmentOf(...chunk(from), k, seg);
      pending.push(handled(P.recv(from, tag(GATHER, k), bytes.subarray(g0, g1)).then(() => undefined)));
    }
  // The pieces of segment k, received into its slots.
  const postPieces = (k: number): Promise<Uint8Array>[] => {
    const [b0, b1] = segmentOf(ms, me, k, seg);
    const pieces: Promise<Uint8Array>[] = [];
    for (let d = 1; d < p; d++) {
      const at = ((d - 1) * W + (k % W)) * slot;
      pieces.push(handled(P.recv(mod(r + d, p), tag(REDUCE, k), staging.subarray(at, at + (b1 - b0)))));
    }
    return pieces;
  };
  const posted: Promise<Uint8Array>[][] = [];
  for (let k = 0; k < W; k++) posted.push(postPieces(k));
  // To each owner: segments 0 .. W - 1 at once, later ones as the owner's READY for them arrives.
  const sendTo = async (to: number): Promise<void> => {
    const sends: Promise<void>[] = [];
    for (let k = 0; k < segments; k++) {
      if (k >= W) await P.recv(to, tag(READY, k), empty);
      const [s0, s1] = segmentOf(...chunk(to), k, seg);
      sends.push(handled(P.send(to, tag(REDUCE, k), bytes.subarray(s0, s1))));
    }
    await Promise.all(sends);
  };
  for (let d = 1; d < p; d++) pending.push(handled(sendTo(mod(r + d, p))));
  for (let k = 0; k < segments; k++) {
    const [b0, b1] = segmentOf(ms, me, k, seg);
    // All p - 1 pieces in one pass over this segment of `a` (each element still reduced in the order
    // j+1, j+2, ...): fewer passes over memory (3 x 64 MiB reduced in 19-21 ms instead of 24-25, one core).
    const got = await Promise.all(posted[k]!);
    combineAllInto(
      a.subarray(b0 / E, b1 / E),
      got.map((g) => new View(g.buffer, g.byteOffset, (b1 - b0) / E)),
      op,
    );
    for (let d = 1; d < p; d++) pending.push(handled(P.send(mod(r + d, p), tag(GATHER, k), bytes.subarray(b0, b1))));
    // Segment k's slots are free: segment k + W's pieces go there, and their senders may go on.
    if (k + W < segments) {
      posted.push(postPieces(k + W));
      for (let d = 1; d < p; d++) pending.push(handled(P.send(mod(r + d, p), tag(READY, k + W), empty)));
    }
  }
  await Promise.all(pending);
  giveScratch(staging.buffer as ArrayBuffer);
}

/** Ring reduce-scatter in place: afterwards chunk P.rank of `a` holds the reduction over all ranks. */
export function ringReduceScatter(P: Peers, a: WorkArray, op: ReduceOp, o: AlgorithmOptions): Promise<void> {
  return pipelinedRing(P, a, op, o, false);
}

/** Ring all-gather in place over byte ranges: rank i contributes range(i) of `buf`. */
export async function ringAllGather(
  P: Peers,
  buf: Uint8Array,
  range: (i: number) => [number, number],
  stepBase: number,
  o: AlgorithmOptions,
): Promise<void> {
  const p = P.size;
  const r = P.rank;
  const right = mod(r + 1, p);
  const left = mod(r - 1, p);
  for (let s = 0; s < p - 1; s++) {
    const [ss, se] = range(mod(r - s, p));
    const [rs, re] = range(mod(r - s - 1, p));
    await Promise.all([
      sendSegmented(P, right, stepBase + s, buf.subarray(ss, se), o.segmentBytes),
      recvSegmented(P, left, stepBase + s, buf.subarray(rs, re), o.segmentBytes),
    ]);
  }
}

/** Recursive doubling; ranks beyond the largest power of two fold into a partner first. */
export async function recursiveDoublingAllReduce(P: Peers, a: WorkArray, op: ReduceOp): Promise<void> {
  const p = P.size;
  const r = P.rank;
  if (p === 1) return;
  const p2 = 1 << Math.floor(Math.log2(p));
  const rem = p - p2;
  const mine = bytesOf(a);
  const FINAL = 0xfff;
  if (r < 2 * rem && r % 2 === 0) {
    await P.send(r + 1, 0, mine);
    await P.recv(r + 1, FINAL, mine);
    return;
  }
  // The partner's data lands in reused scratch: a fresh array per operation cost an allocation, its
  // zero-filling and collector work on every small all-reduce.
  const scratch = takeScratch(a.byteLength);
  const tmp = new (a.constructor as new (b: ArrayBuffer, o: number, n: number) => WorkArray)(scratch, 0, a.length);
  let nr: number;
  if (r < 2 * rem) {
    await P.recv(r - 1, 0, bytesOf(tmp));
    combineInto(a, tmp, op);
    nr = r >> 1;
  } else nr = r - rem;
  for (let mask = 1, step = 1; mask < p2; mask <<= 1, step++) {
    const pn = nr ^ mask;
    const peer = pn < rem ? pn * 2 + 1 : pn + rem;
    await Promise.all([P.send(peer, step, mine), P.recv(peer, step, bytesOf(tmp))]);
    combineInto(a, tmp, op);
  }
  giveScratch(scratch);
  if (r < 2 * rem) await P.send(r - 1, FINAL, mine);
}

/** All-reduce in place, choosing the algorithm by message size. */
export async function allReduce(P: Peers, a: WorkArray, op: ReduceOp, o: AlgorithmOptions): Promise<void> {
  if (P.size === 1) return;
  if (a.byteLength <= o.smallAllReduceBytes || a.length < P.size) return recursiveDoublingAllReduce(P, a, op);
  if (P.size <= o.directAllReduceMaxRanks) await directAllReduce(P, a, op, o);
  else await pipelinedRing(P, a, op, o, true);
}

/** Every rank's `input` (equal lengths) concatenated in rank order into `output`. */
export async function allGather(P: Peers, input: Uint8Array, output: Uint8Array, o: AlgorithmOptions): Promise<void> {
  const L = input.byteLength;
  output.set(input, P.rank * L);
  if (P.size === 1) return;
  await ringAllGather(P, output, (i) => [i * L, (i + 1) * L], 0, o);
}

/** Pairwise exchange with every peer at once, one message per peer and direction (nothing is reduced,
 *  so segments would only add messages; the transport reads each block straight into `output`).
 *  Offsets are byte offsets of each peer's block. */
export async function allToAll(
  P: Peers,
  input: Uint8Array,
  sendOffsets: readonly number[],
  output: Uint8Array,
  recvOffsets: readonly number[],
  step: number,
): Promise<void> {
  const p = P.size;
  const r = P.rank;
  const jobs: Promise<void>[] = [];
  for (let k = 1; k < p; k++) {
    const to = mod(r + k, p);
    const from = mod(r - k, p);
    jobs.push(P.send(to, step, input.subarray(sendOffsets[to]!, sendOffsets[to + 1]!)));
    jobs.push(P.recv(from, step, output.subarray(recvOffsets[from]!, recvOffsets[from + 1]!)).then(() => undefined));
  }
  output.set(input.subarray(sendOffsets[r]!, sendOffsets[r + 1]!), recvOffsets[r]!);
  await Promise.all(jobs);
}

/** Binomial-tree broadcast; each segment is forwarded to the children as soon as it lands. */
export async function broadcast(P: Peers, buf: Uint8Array, root: number, o: AlgorithmOptions): Promise<void> {
  const p = P.size;
  if (p === 1) return;
  const vr = mod(P.rank - root, p);
  const children: number[] = [];
  let mask = 1;
  let parent = -1;
  while (mask < p) {
    if (vr & mask) {
      parent = mod(vr - mask + root, p);
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1) if (vr + mask < p) children.push(mod(vr + mask + root, p));
  if (parent < 0) {
    await Promise.all(children.map((c) => sendSegmented(P, c, 0, buf, o.segmentBytes)));
    return;
  }
  const forwards: Promise<void>[] = [];
  const seg = o.segmentBytes;
  await recvSegmented(P, parent, 0, buf, seg, (s, e) => {
    const k = Math.floor(s / seg);
    for (const c of children) forwards.push(P.send(c, k, buf.subarray(s, e)));
  });
  await Promise.all(forwards);
}

/** Dissemination barrier: ceil(log2 p) rounds of empty messages. */
export async function barrier(P: Peers): Promise<void> {
  const p = P.size;
  const empty = new Uint8Array(0);
  for (let k = 1, round = 0; k < p; k <<= 1, round++)
    await Promise.all([P.send(mod(P.rank + k, p), round, empty), P.recv(mod(P.rank - k, p), round, new Uint8Array(0))]);
}

// All-reduce and all-to-all of the `local` transport straight through shared memory. The ranks are
// threads of one process, so instead of relaying bytes through the point-to-point rings (a copy in,
// a copy out, a hand-off per slot), each rank copies its input into its own staging area once, and
// the others read it there in place:
//   all-reduce: stage a piece; every rank reduces it reading every rank's staging area, or (more ranks,
//               large pieces) rank j reduces share j, publishes it in its own area, and every rank
//               copies the shares out.
//   all-to-all: stage the piece for each destination; every rank copies what is addressed to it
//               straight into its output.
// A message moves in pieces of `pieceBytes` per rank, two staging
// buffers per rank so one piece is written while the last is read. Ranks meet through one counter
// per rank ("arrivals"), waited on with Atomics.waitAsync: one hand-off per piece (all-to-all, and
// all-reduce of 2 ranks or small pieces, where every rank reduces the whole piece) or two (larger
// all-reduce: rank j reduces share j), however many ranks take part. An all-to-all's counts travel
// with its first piece. Each element is reduced in rank order, so every rank gets bitwise the same
// result.
import type { PeerFailure } from './errors.js';
import { bytesOf, chunkRange } from './algorithms.js';
import { combineInto, type ReduceOp, type WorkArray } from './reduce.js';

/** Pieces up to this size are reduced whole by every rank (one hand-off instead of two). */
const WHOLE_REDUCE_BYTES = 256 << 10;
/** Groups with an id below this get a staging slot of their own (0 is the world); others use the rings. */
export const SHM_SLOTS = 8;
/** int32s per (slot, rank) control block (64 bytes, so ranks do not share a cache line); word 0 counts
 *  the rank's arrivals. */
const STRIDE = 16;
const ARRIVALS = 0;
/** Float64s per (slot, rank, parity) descriptor: op code, sequence, elements, then the bytes sent to and
 *  expected from each rank. */
const DESC_HEAD = 3;

export interface ShmFabric {
  size: number;
  /** Per (slot, rank): two staging buffers of pieceBytes. */
  staging: SharedArrayBuffer;
  /** Per (slot, rank): a control block. */
  control: SharedArrayBuffer;
  /** Per (slot, rank, parity of the operation): what the rank is doing (checked by the others). */
  descriptors: SharedArrayBuffer;
  pieceBytes: number;
}

export function createShmFabric(size: number, pieceBytes: number): ShmFabric {
  if (!Number.isInteger(Math.log2(pieceBytes)) || pieceBytes < 4096)
    throw new RangeError(`pieceBytes must be a power of two of at least 4096, got ${pieceBytes}`);
  return {
    size,
    // Untouched pages of a SharedArrayBuffer cost no memory, so slots of unused groups are free.
    staging: new SharedArrayBuffer(SHM_SLOTS * size * 2 * pieceBytes),
    control: new SharedArrayBuffer(SHM_SLOTS * size * STRIDE * 4),
    descriptors: new SharedArrayBuffer(SHM_SLOTS * size * 2 * (DESC_HEAD + 2 * size) * 8),
    pieceBytes,
  };
}

/** Default staging piece per rank. Hand-offs between threads, not copies, dominate (each one waits for
 *  the peer's thread to be scheduled), so pieces are large: most messages move in one or two. */
export function defaultPieceBytes(size: number): number {
  return size <= 2 ? 4 << 20 : size <= 4 ? 2 << 20 : 1 << 20;
}

/** Wakes every rank waiting on the control blocks (a rank went down, or this one aborted). */
export function wakeAll(f: ShmFabric): void {
  const ctrl = new Int32Array(f.control);
  for (let i = 0; i < ctrl.length; i += STRIDE) Atomics.notify(ctrl, i + ARRIVALS);
}

type WaitAsync = (a: Int32Array, i: number, v: number) => { async: boolean; value: Promise<string> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

type Ctor = new (buffer: ArrayBufferLike) => WorkArray;

/** What a group's shared-memory collectives need from the transport. */
export interface ShmHost {
  /** The failure that broke the transport, if any. */
  readonly failure: PeerFailure | null;
  /** Why `peer` can no longer take part, or null while it runs. */
  peerGone(peer: number): PeerFailure | null;
}

/** One group's shared-memory collectives (a group whose id has a slot). Operations run one at a time,
 *  in the order they were called, which every rank of the group shares. */
export class ShmGroup {
  private readonly ctrl: Int32Array;
  private readonly desc: Float64Array;
  private readonly bytes: Uint8Array;
  private readonly views = new Map<Ctor, WorkArray>();
  private readonly me: number;
  private readonly piece: number;
  private readonly worldSize: number;
  /** Staging pieces used so far (all ranks agree): piece k uses buffer k & 1. */
  private round = 0;
  private arrivals = 0;
  private ops = 0;
  private queue: Promise<unknown> = Promise.resolve();
  /** The operation in progress and the world ranks it waits for (for timeout reports). */
  private current: { seq: number; waiting: Set<number> } | null = null;

  constructor(
    private readonly fabric: ShmFabric,
    private readonly host: ShmHost,
    private readonly slot: number,
    /** World ranks of the group, in group-rank order. */
    private readonly ranks: readonly number[],
    worldRank: number,
  ) {
    this.ctrl = new Int32Array(fabric.control);
    this.desc = new Float64Array(fabric.descriptors);
    this.bytes = new Uint8Array(fabric.staging);
    this.piece = fabric.pieceBytes;
    this.worldSize = fabric.size;
    this.me = ranks.indexOf(worldRank);
  }

  /** World ranks this group's operation `seq` still waits for. */
  waitingOn(seq: number): number[] {
    return this.current?.seq === seq ? [...this.current.waiting].sort((a, b) => a - b) : [];
  }

  /** In place; `opCode` and `seq` identify the operation (ranks must agree on both). */
  allReduce(opCode: number, seq: number, a: WorkArray, op: ReduceOp): Promise<void> {
    return this.serial(seq, () => this.runAllReduce(opCode, seq, a, op));
  }

  /**
   * Sends input[sendOffsets[g], sendOffsets[g+1]) to group rank g (byte offsets, size + 1 entries).
   * `place` learns how many bytes arrive from each rank (every rank publishes its sends with its first
   * piece, so no separate count exchange is needed) and returns the output and where each block goes.
   */
  allToAll(
    opCode: number,
    seq: number,
    input: Uint8Array,
    sendOffsets: readonly number[],
    place: Placement,
  ): Promise<void> {
    return this.serial(seq, () => this.runAllToAll(opCode, seq, input, sendOffsets, place));
  }

  private serial(seq: number, body: () => Promise<void>): Promise<void> {
    const run = this.queue.then(async () => {
      this.current = { seq, waiting: new Set() };
      try {
        await body();
      } finally {
        this.current = null;
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private control(g: number): number {
    return (this.slot * this.worldSize + this.ranks[g]!) * STRIDE;
  }

  /** Float64 index of group rank g's descriptor for the operation of this parity. */
  private descriptor(g: number, parity: number): number {
    return ((this.slot * this.worldSize + this.ranks[g]!) * 2 + parity) * (DESC_HEAD + 2 * this.worldSize);
  }

  /** Byte offset of group rank g's staging buffer for piece `round`. */
  private stagingAt(g: number, round: number): number {
    return ((this.slot * this.worldSize + this.ranks[g]!) * 2 + (round & 1)) * this.piece;
  }

  private view(like: WorkArray): WorkArray {
    const ctor = like.constructor as Ctor;
    let v = this.views.get(ctor);
    if (!v) this.views.set(ctor, (v = new ctor(this.fabric.staging)));
    return v;
  }

  /** Publishes what this rank is about to do; a fast rank may publish its next operation while a slow
   *  one still reads this one, hence two descriptors alternating by operation. */
  private publish(
    opCode: number,
    seq: number,
    elements: number,
    sends?: readonly number[],
    recvs?: readonly number[],
  ): number {
    const parity = this.ops++ & 1;
    const d = this.descriptor(this.me, parity);
    this.desc[d] = opCode;
    this.desc[d + 1] = seq;
    this.desc[d + 2] = elements;
    if (sends)
      for (let g = 0; g < sends.length; g++) {
        this.desc[d + DESC_HEAD + 2 * g] = sends[g]!;
        this.desc[d + DESC_HEAD + 2 * g + 1] = recvs ? recvs[g]! : -1;
      }
    return parity;
  }

  /** After the first arrival: every rank runs the same operation on matching sizes, or this throws (on
   *  every rank alike, since each checks all the descriptors, so the group stays in step). */
  private checkAgreement(parity: number, check: (d: number, g: number) => string | null): void {
    const mine = this.descriptor(this.me, parity);
    for (let g = 0; g < this.ranks.length; g++) {
      const d = this.descriptor(g, parity);
      const peer = this.ranks[g]!;
      if (this.desc[d] !== this.desc[mine] || this.desc[d + 1] !== this.desc[mine + 1])
        throw new Error(
          `rank ${peer} runs operation #${this.desc[d + 1]} (code ${this.desc[d]}) of this group where this rank runs ` +
            `#${this.desc[mine + 1]} (code ${this.desc[mine]}): every rank must call the group's operations in the same order`,
        );
      const why = check(d, g);
      if (why) throw new Error(`${why}: ranks disagree on the buffer size`);
    }
  }

  /** Publishes this rank's next arrival and waits until every rank of the group has made it. */
  private async arriveAndWait(): Promise<void> {
    const target = ++this.arrivals;
    const mine = this.control(this.me) + ARRIVALS;
    Atomics.store(this.ctrl, mine, target);
    Atomics.notify(this.ctrl, mine);
    for (let g = 0; g < this.ranks.length; g++) {
      if (g === this.me) continue;
      const at = this.control(g) + ARRIVALS;
      for (;;) {
        const seen = Atomics.load(this.ctrl, at);
        if (seen - target >= 0) break;
        if (this.host.failure) throw this.host.failure;
        const peer = this.ranks[g]!;
        const gone = this.host.peerGone(peer);
        if (gone) throw gone;
        this.current?.waiting.add(peer);
        const w = waitAsync(this.ctrl, at, seen);
        if (w.async) await w.value;
        this.current?.waiting.delete(peer);
      }
    }
  }

  private async runAllReduce(opCode: number, seq: number, a: WorkArray, op: ReduceOp): Promise<void> {
    const p = this.ranks.length;
    const E = a.BYTES_PER_ELEMENT;
    const perPiece = this.piece / E;
    const staged = this.view(a);
    const parity = this.publish(opCode, seq, a.length);
    // Two ranks, or small pieces: each rank reduces the whole piece itself (one hand-off per piece).
    // Otherwise rank j reduces share j and publishes it (two hand-offs, 1/p of the reduction each).
    const whole = p === 2 || this.piece <= WHOLE_REDUCE_BYTES;
    const scratch = whole ? null : new (a.constructor as new (n: number) => WorkArray)(Math.ceil(perPiece / p));
    for (let start = 0; ; start += perPiece) {
      const len = Math.min(perPiece, a.length - start);
      const k = this.round++;
      const at = (g: number) => this.stagingAt(g, k) / E;
      // Copies into shared memory go through byte views: V8 copies other typed arrays into a
      // SharedArrayBuffer element by element (15x slower than a Uint8Array's memcpy, measured).
      this.bytes.set(bytesOf(a, start * E, (start + len) * E), at(this.me) * E);
      await this.arriveAndWait();
      if (start === 0)
        this.checkAgreement(parity, (d, g) =>
          this.desc[d + 2] === a.length
            ? null
            : `rank ${this.ranks[g]} has ${this.desc[d + 2]} elements, this rank ${a.length}`,
        );
      // Every element is reduced in rank order, so every rank ends with bitwise the same result.
      if (whole) {
        const acc = a.subarray(start, start + len);
        if (this.me !== 0) acc.set(staged.subarray(at(0), at(0) + len));
        for (let g = 1; g < p; g++) combineInto(acc, staged.subarray(at(g), at(g) + len), op);
      } else {
        const [s, e] = chunkRange(len, p, this.me);
        const acc = scratch!.subarray(0, e - s);
        acc.set(staged.subarray(at(0) + s, at(0) + e));
        for (let g = 1; g < p; g++) combineInto(acc, staged.subarray(at(g) + s, at(g) + e), op);
        this.bytes.set(bytesOf(acc), (at(this.me) + s) * E);
        a.set(acc, start + s);
        await this.arriveAndWait();
        for (let g = 0; g < p; g++) {
          if (g === this.me) continue;
          const [gs, ge] = chunkRange(len, p, g);
          a.set(staged.subarray(at(g) + gs, at(g) + ge), start + gs);
        }
      }
      if (start + perPiece >= a.length) return;
    }
  }

  private async runAllToAll(
    opCode: number,
    seq: number,
    input: Uint8Array,
    sendOffsets: readonly number[],
    place: Placement,
  ): Promise<void> {
    const p = this.ranks.length;
    // Each destination gets an equal part of the staging buffer (8-byte aligned).
    const part = Math.floor(this.piece / p / 8) * 8;
    const sends = Array.from({ length: p }, (_, g) => sendOffsets[g + 1]! - sendOffsets[g]!);
    const parity = this.publish(opCode, seq, 0, sends, place.expected);
    const sentBy = (g: number, h: number) => this.desc[this.descriptor(g, parity) + DESC_HEAD + 2 * h]!;
    let rounds = 1;
    let output: Uint8Array | null = null;
    let recvOffsets: readonly number[] = [];
    for (let i = 0; i < rounds; i++) {
      const k = this.round++;
      const base = this.stagingAt(this.me, k);
      for (let g = 0; g < p; g++) {
        if (g === this.me) continue;
        const s = Math.min(sendOffsets[g]! + i * part, sendOffsets[g + 1]!);
        const e = Math.min(s + part, sendOffsets[g + 1]!);
        if (e > s) this.bytes.set(input.subarray(s, e), base + g * part);
      }
      await this.arriveAndWait();
      if (i === 0) {
        this.checkAgreement(parity, (d, g) => {
          for (let h = 0; h < p; h++) {
            const sent = this.desc[d + DESC_HEAD + 2 * h]!;
            const expected = this.desc[this.descriptor(h, parity) + DESC_HEAD + 2 * g + 1]!;
            if (expected >= 0 && sent !== expected)
              return `rank ${this.ranks[g]} sends ${sent} bytes to rank ${this.ranks[h]}, which expects ${expected}`;
          }
          return null;
        });
        // Every rank sees every rank's sends, so all agree on the number of pieces.
        for (let g = 0; g < p; g++)
          for (let h = 0; h < p; h++) if (h !== g) rounds = Math.max(rounds, Math.ceil(sentBy(g, h) / part));
        ({ output, recvOffsets } = place.place(Array.from({ length: p }, (_, g) => sentBy(g, this.me))));
        output.set(input.subarray(sendOffsets[this.me]!, sendOffsets[this.me + 1]!), recvOffsets[this.me]!);
      }
      for (let g = 0; g < p; g++) {
        if (g === this.me) continue;
        const s = Math.min(recvOffsets[g]! + i * part, recvOffsets[g + 1]!);
        const e = Math.min(s + part, recvOffsets[g + 1]!);
        if (e > s) {
          const from = this.stagingAt(g, k) + this.me * part;
          output!.set(this.bytes.subarray(from, from + (e - s)), s);
        }
      }
    }
  }
}

/** Where an all-to-all's received blocks go. */
export interface Placement {
  /** Bytes this rank expects from each group rank, where the caller knows them (checked against the sends). */
  expected?: readonly number[];
  /** Given the bytes arriving from each rank: the output and each block's byte offset (size + 1 entries). */
  place(recvBytes: number[]): { output: Uint8Array; recvOffsets: readonly number[] };
}

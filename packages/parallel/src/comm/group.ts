// ProcessGroup: a set of ranks and the collectives between them, shaped like PyTorch's c10d.
// Every operation returns a Work at once; the data moves in the background. Every rank must call a
// group's collectives (and create sub-groups) in the same order; sequence numbers tie them together.
import type { DType, StorageArray, Tensor } from '@dsv3/core';
import { allocStorageArray } from '@dsv3/core';
import * as algo from './algorithms.js';
import { DEFAULT_ALGORITHM_OPTIONS, type AlgorithmOptions, type Peers } from './algorithms.js';
import {
  checkBuffer,
  checkReducible,
  deliver,
  fromWork,
  isTensor,
  stage,
  toWork,
  u8,
  type CommBuffer,
} from './buffers.js';
import { CollectiveError, CollectiveTimeoutError, OP_CODES, PeerFailure, type OpName } from './errors.js';
import { assertReduceOp, type ReduceOp, type WorkArray } from './reduce.js';
import type { NativeComm } from './native.js';
import type { ShmGroup } from './shm.js';
import type { Transport } from './transport.js';
import { KIND_COLLECTIVE, KIND_P2P } from './wire.js';
import { Work } from './work.js';

export interface GroupOptions {
  /** An operation that has not finished after this long fails, and the group is aborted. Default 300 s. */
  timeoutMs?: number;
  /** Algorithm tuning (segment size, the recursive-doubling / ring threshold). */
  algorithm?: Partial<AlgorithmOptions>;
}

export interface BufferOptions {
  /** The dtype of a host array where its type is ambiguous (Uint16Array: 'bf16' or 'f16'; Uint8Array: fp8). */
  dtype?: DType;
}

export interface AllToAllOptions extends BufferOptions {
  /** A host array to receive into (its length must be the total received), as torch's
   *  all_to_all_single(output, input); without it a new array is allocated. Host inputs only. */
  out?: StorageArray;
}

export interface AllToAllResult<T> {
  output: T;
  /** Rows (first-dimension entries; elements for host arrays) received from each rank, in rank order. */
  outputSplits: number[];
}

export const DEFAULT_TIMEOUT_MS = 300_000;

export class ProcessGroup {
  /** This rank's index in the group. */
  readonly rank: number;
  readonly size: number;
  private collectiveSeq = 0;
  private readonly p2pSeq = new Map<string, number>();
  private groupCounter = 0;
  private destroyed = false;
  readonly timeoutMs: number;
  private readonly algo: AlgorithmOptions;
  /** The transport's own collectives for this group (MPI), used instead of algorithms.ts. */
  private readonly native: NativeComm | null;
  /** All-reduce and all-to-all through shared memory (local transport), used instead of algorithms.ts. */
  private readonly shm: ShmGroup | null;

  constructor(
    private readonly transport: Transport,
    /** Global ranks of the members, in group-rank order. */
    readonly ranks: readonly number[],
    /** 0 for the world; sub-groups count up in creation order. */
    readonly id: number,
    options: GroupOptions = {},
    private readonly world: ProcessGroup | null = null,
    native?: NativeComm | null,
  ) {
    this.native = native === undefined ? (transport.native?.world() ?? null) : native;
    this.rank = ranks.indexOf(transport.rank);
    if (this.rank < 0) throw new Error(`internal: rank ${transport.rank} is not a member of group ${id}`);
    this.size = ranks.length;
    this.shm = this.native ? null : (transport.sharedMemory?.(id, ranks) ?? null);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(this.timeoutMs > 0))
      throw new RangeError(`timeoutMs must be a positive number of milliseconds, got ${this.timeoutMs}`);
    this.algo = { ...DEFAULT_ALGORITHM_OPTIONS, ...options.algorithm };
    if (this.algo.segmentBytes % 8 !== 0 || this.algo.segmentBytes <= 0)
      throw new RangeError(`segmentBytes must be a positive multiple of 8, got ${this.algo.segmentBytes}`);
    if (!Number.isInteger(this.algo.windowSegments) || this.algo.windowSegments < 0)
      throw new RangeError(
        `windowSegments must be a non-negative integer (0: no window), got ${this.algo.windowSegments}`,
      );
  }

  /** This rank's index in the world. */
  get globalRank(): number {
    return this.transport.rank;
  }
  /** The transport carrying this group's traffic. */
  get backend(): Transport['kind'] {
    return this.transport.kind;
  }
  /** How this rank reads from each world rank where the transport chooses per peer (tcp: 'unix' for a
   *  peer on this host, 'tcp' otherwise; null for itself); empty for the other transports. */
  get links(): readonly (string | null)[] {
    return this.transport.links?.() ?? [];
  }

  // ---------------------------------------------------------------------------------------------
  // Sub-groups

  /**
   * A group of these world ranks, or null on ranks outside it. Every rank of the world must call
   * newGroup with the same ranks in the same order (the groups are numbered by creation).
   */
  newGroup(ranks: readonly number[], options: GroupOptions = {}): ProcessGroup | null {
    const world = this.world ?? this;
    if (this !== world) throw new Error('newGroup() is called on the world group (ranks are world ranks)');
    this.checkUsable('newGroup');
    const worldSize = this.size;
    if (!Array.isArray(ranks) || ranks.length === 0)
      throw new TypeError('newGroup(ranks): expected a non-empty array of world ranks');
    const seen = new Set<number>();
    for (const r of ranks) {
      if (!Number.isInteger(r) || r < 0 || r >= worldSize)
        throw new RangeError(`newGroup: rank ${r} is not a rank of the ${worldSize}-rank world`);
      if (seen.has(r)) throw new RangeError(`newGroup: rank ${r} is listed twice`);
      seen.add(r);
    }
    const id = ++world.groupCounter;
    const native = this.transport.native ? this.transport.native.split(ranks) : null; // collective over the world
    if (!seen.has(this.transport.rank)) return null;
    return new ProcessGroup(
      this.transport,
      [...ranks],
      id,
      { timeoutMs: this.timeoutMs, algorithm: this.algo, ...options },
      world,
      native,
    );
  }

  /** Creates every group of a partition in order (on every rank); returns the one holding this rank. */
  newGroups(partition: readonly (readonly number[])[], options: GroupOptions = {}): ProcessGroup | null {
    let mine: ProcessGroup | null = null;
    for (const ranks of partition) mine = this.newGroup(ranks, options) ?? mine;
    return mine;
  }

  // ---------------------------------------------------------------------------------------------
  // Collectives

  /** Reduces across ranks; every rank gets the result. bf16/f16 accumulate in f32. */
  allReduce<T extends CommBuffer>(buf: T, op: ReduceOp = 'sum', opts: BufferOptions = {}): Work<T> {
    const dtype = checkBuffer(buf, opts.dtype, 'allReduce');
    checkReducible(dtype, assertReduceOp(op), 'allReduce');
    return this.collective('ALLREDUCE', async (P, seq) => {
      const s = await stage(buf, dtype);
      const work = toWork(dtype, s.raw);
      if (this.native) await this.native.allReduce(work, op === 'avg' ? 'sum' : op);
      else if (this.shm) await this.shm.allReduce(OP_CODES.ALLREDUCE, seq, work, op);
      else await algo.allReduce(P, work, op, this.algo);
      if (op === 'avg') divide(work, P.size);
      fromWork(dtype, work, s.raw);
      return deliver<T>(s, s.raw);
    });
  }

  /** Reduces across ranks and leaves block `rank` (of `size` equal blocks along dim 0) on each rank. */
  reduceScatter<T extends CommBuffer>(buf: T, op: ReduceOp = 'sum', opts: BufferOptions = {}): Work<T> {
    const dtype = checkBuffer(buf, opts.dtype, 'reduceScatter');
    checkReducible(dtype, assertReduceOp(op), 'reduceScatter');
    const { rows, rowElems, rest } = rowsOf(buf);
    if (rows % this.size !== 0)
      throw new RangeError(
        `reduceScatter: the first dimension (${rows}) must be a multiple of the group size ${this.size}`,
      );
    return this.collective('REDUCE_SCATTER', async (P) => {
      const s = await stage(buf, dtype);
      let work = toWork(dtype, s.raw);
      if (work === (s.raw as unknown) && !s.tensor) work = work.slice(); // never clobber the caller's input
      const m = (rows / P.size) * rowElems;
      let mine: WorkArray;
      if (this.native) {
        mine = new (work.constructor as new (n: number) => WorkArray)(m);
        await this.native.reduceScatter(work, mine, op === 'avg' ? 'sum' : op);
      } else {
        await algo.ringReduceScatter(P, work, op, this.algo);
        mine = work.subarray(P.rank * m, (P.rank + 1) * m);
      }
      if (op === 'avg') divide(mine, P.size);
      const out = allocStorageArray(dtype, m);
      if (dtype === 'bf16' || dtype === 'f16') fromWork(dtype, mine, out);
      else out.set(mine);
      return deliver<T>(s, out, [rows / P.size, ...rest]);
    });
  }

  /** Every rank's buffer (equal sizes), concatenated in rank order along dim 0. */
  allGather<T extends CommBuffer>(buf: T, opts: BufferOptions = {}): Work<T> {
    const dtype = checkBuffer(buf, opts.dtype, 'allGather');
    const { rows, rest } = rowsOf(buf);
    return this.collective('ALLGATHER', async (P) => {
      const s = await stage(buf, dtype);
      const out = allocStorageArray(dtype, s.raw.length * P.size);
      if (this.native) await this.native.allGather(u8(s.raw), u8(out));
      else await algo.allGather(P, u8(s.raw), u8(out), this.algo);
      return deliver<T>(s, out, [rows * P.size, ...rest]);
    });
  }

  /**
   * Sends rows [Σ inputSplits[<j], +inputSplits[j]) of dim 0 to rank j (MoE dispatch). Without
   * outputSplits, the ranks first exchange their counts. Splits may be uneven and may be zero.
   */
  allToAll<T extends CommBuffer>(
    buf: T,
    inputSplits?: readonly number[],
    outputSplits?: readonly number[],
    opts: AllToAllOptions = {},
  ): Work<AllToAllResult<T>> {
    const dtype = checkBuffer(buf, opts.dtype, 'allToAll');
    const into = opts.out;
    if (into !== undefined) {
      if (isTensor(buf)) throw new TypeError('allToAll: `out` is for host arrays; a tensor input returns a new tensor');
      if (checkBuffer(into, opts.dtype, 'allToAll out') !== dtype || into.constructor !== buf.constructor)
        throw new TypeError(`allToAll: out must be a ${buf.constructor.name} like the input`);
    }
    const { rows, rowElems, rest } = rowsOf(buf);
    const p = this.size;
    if (inputSplits === undefined && rows % p !== 0)
      throw new RangeError(
        `allToAll: without inputSplits the first dimension (${rows}) must be a multiple of the group size ${p}`,
      );
    const send = inputSplits ? checkSplits(inputSplits, p, 'inputSplits') : new Array<number>(p).fill(rows / p);
    const sendTotal = send.reduce((a, b) => a + b, 0);
    if (sendTotal !== rows)
      throw new RangeError(`allToAll: inputSplits sum to ${sendTotal} but the input has ${rows} rows`);
    const given = outputSplits ? checkSplits(outputSplits, p, 'outputSplits') : null;
    return this.collective('ALLTOALL', async (P, seq) => {
      const s = await stage(buf, dtype);
      const rowBytes = rowElems * s.raw.BYTES_PER_ELEMENT;
      const sendOff = offsets(send, rowBytes);
      let recv = given;
      let out: StorageArray | null = null;
      const allocate = (counts: readonly number[]) => {
        recv = [...counts];
        const total = recv.reduce((a, b) => a + b, 0) * rowElems;
        if (into && into.length !== total)
          throw new RangeError(
            `allToAll: out has ${into.length} elements but ${total} arrive (${recv.join(', ')} per rank)`,
          );
        out = into ?? allocStorageArray(dtype, total);
        return { output: u8(out), recvOffsets: offsets(recv, rowBytes) };
      };
      if (this.shm)
        // The counts travel with the payload.
        await this.shm.allToAll(OP_CODES.ALLTOALL, seq, u8(s.raw), sendOff, {
          ...(given ? { expected: given.map((c) => c * rowBytes) } : {}),
          place: (bytes) => {
            const bad = bytes.findIndex((b) => b % rowBytes !== 0);
            if (bad >= 0)
              throw new RangeError(
                `allToAll: rank ${this.ranks[bad]} sends ${bytes[bad]} bytes, not whole rows of ${rowBytes} bytes: ranks disagree on the row shape`,
              );
            return allocate(bytes.map((b) => b / rowBytes));
          },
        });
      else {
        if (!recv) {
          const got = new Uint32Array(p);
          const offs = Array.from({ length: p + 1 }, (_, i) => i * 4);
          if (this.native) await this.native.allToAll(u8(new Uint32Array(send)), offs, u8(got), offs);
          else await algo.allToAll(P, u8(new Uint32Array(send)), offs, u8(got), offs, 0);
          recv = Array.from(got);
        }
        const { output, recvOffsets } = allocate(recv);
        if (this.native) await this.native.allToAll(u8(s.raw), sendOff, output, recvOffsets);
        else await algo.allToAll(P, u8(s.raw), sendOff, output, recvOffsets, 1);
      }
      const outRows = recv!.reduce((a, b) => a + b, 0);
      return { output: deliver<T>(s, out!, [outRows, ...rest]), outputSplits: [...recv!] };
    });
  }

  /** Root's buffer on every rank (same shape and dtype everywhere). */
  broadcast<T extends CommBuffer>(buf: T, root = 0, opts: BufferOptions = {}): Work<T> {
    const dtype = checkBuffer(buf, opts.dtype, 'broadcast');
    this.checkRank(root, 'broadcast root');
    return this.collective('BROADCAST', async (P) => {
      const s = await stage(buf, dtype);
      if (this.native) await this.native.broadcast(u8(s.raw), root);
      else await algo.broadcast(P, u8(s.raw), root, this.algo);
      return deliver<T>(s, s.raw);
    });
  }

  /** Resolves on every rank once all ranks have entered it. */
  barrier(): Work<void> {
    return this.collective('BARRIER', (P) => (this.native ? this.native.barrier() : algo.barrier(P)));
  }

  // ---------------------------------------------------------------------------------------------
  // Point to point

  /** Sends `buf` to group rank `dst`; messages to one peer with one tag arrive in order. */
  send(buf: CommBuffer, dst: number, tag = 0, opts: BufferOptions = {}): Work<void> {
    const dtype = checkBuffer(buf, opts.dtype, 'send');
    this.checkPeer(dst, 'send');
    checkTag(tag);
    return this.p2p('SEND', dst, tag, async (seq) => {
      const s = await stage(buf, dtype);
      if (this.native) await this.native.send(u8(s.raw), dst, tag);
      else await this.transport.send(this.ranks[dst]!, this.p2pTag(seq, tag), u8(s.raw));
    });
  }

  /**
   * Receives from group rank `src` a message shaped like `like`: a host array is filled in place;
   * for a tensor, a new tensor of its shape, dtype and backend is returned.
   */
  recv<T extends CommBuffer>(like: T, src: number, tag = 0, opts: BufferOptions = {}): Work<T> {
    const dtype = checkBuffer(like, opts.dtype, 'recv');
    this.checkPeer(src, 'recv');
    checkTag(tag);
    return this.p2p('RECV', src, tag, async (seq) => {
      const target: StorageArray = isTensor(like) ? allocStorageArray(dtype, like.size) : (like as StorageArray);
      if (this.native) await this.native.recv(u8(target), src, tag);
      else await this.transport.recv(this.ranks[src]!, this.p2pTag(seq, tag), u8(target));
      if (!isTensor(like)) return like;
      return deliver<T>({ dtype, raw: target, tensor: like as Tensor }, target);
    });
  }

  /** Ends the group; on the world this closes the transport (peers waiting on this rank fail). */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    if (!this.world) await this.transport.close();
  }

  // ---------------------------------------------------------------------------------------------

  private checkUsable(what: string): void {
    if (this.destroyed || this.world?.destroyed) throw new Error(`${what}: the process group was destroyed`);
  }

  private checkRank(r: number, what: string): void {
    if (!Number.isInteger(r) || r < 0 || r >= this.size)
      throw new RangeError(`${what}: ${r} is not a rank of this ${this.size}-rank group`);
  }

  private checkPeer(r: number, what: string): void {
    this.checkRank(r, `${what} peer`);
    if (r === this.rank) throw new RangeError(`${what}: rank ${r} is this rank; send and recv need another rank`);
  }

  private p2pTag(seq: number, tag: number) {
    return { group: this.id, kind: KIND_P2P, op: OP_CODES.SEND, seq, step: tag };
  }

  private peers(op: OpName, seq: number): Peers {
    const t = this.transport;
    const tag = (step: number) => ({ group: this.id, kind: KIND_COLLECTIVE, op: OP_CODES[op], seq, step });
    return {
      rank: this.rank,
      size: this.size,
      send: (to, step, data) => t.send(this.ranks[to]!, tag(step), data),
      recv: (from, step, into) => t.recv(this.ranks[from]!, tag(step), into),
    };
  }

  private collective<T>(op: OpName, body: (P: Peers, seq: number) => Promise<T>): Work<T> {
    this.checkUsable(op.toLowerCase());
    const seq = ++this.collectiveSeq;
    if (this.id === 0) this.transport.markEntered?.(seq);
    return this.launch(op, seq, KIND_COLLECTIVE, () => body(this.peers(op, seq), seq));
  }

  private p2p<T>(op: OpName, peer: number, tag: number, body: (seq: number) => Promise<T>): Work<T> {
    this.checkUsable(op.toLowerCase());
    const key = `${op === 'SEND' ? '>' : '<'}${peer}:${tag}`;
    const seq = (this.p2pSeq.get(key) ?? 0) + 1;
    this.p2pSeq.set(key, seq);
    return this.launch(op, seq, KIND_P2P, () => body(seq));
  }

  private launch<T>(op: OpName, seq: number, kind: number, body: () => Promise<T>): Work<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const promise = new Promise<T>((resolve, reject) => {
      timer = setTimeout(() => reject(this.timedOut(op, seq, kind, this.timeoutMs)), this.timeoutMs);
      body().then(resolve, (e: unknown) => reject(this.describe(e, op, seq)));
    }).finally(() => clearTimeout(timer));
    return new Work(op, seq, this.id, promise, (_w, ms) => this.timedOut(op, seq, kind, ms));
  }

  private where(op: OpName, seq: number): string {
    return `${op} #${seq} (group ${this.id}${this.id === 0 ? ', the world' : ''}; this is rank ${this.globalRank})`;
  }

  private describe(e: unknown, op: OpName, seq: number): Error {
    if (e instanceof CollectiveError) return e;
    if (e instanceof PeerFailure) {
      const msg =
        e.peer >= 0
          ? `rank ${e.peer} ${e.reason} during ${this.where(op, seq)}`
          : `${e.reason}; ${this.where(op, seq)} failed`;
      return new CollectiveError(msg, op, seq, e.peer >= 0 ? e.peer : undefined, { cause: e });
    }
    const err = e instanceof Error ? e : new Error(String(e));
    return new CollectiveError(`${this.where(op, seq)} failed: ${err.message}`, op, seq, undefined, { cause: err });
  }

  /** Builds the timeout error and aborts the transport, so peers fail at once rather than hang. */
  private timedOut(op: OpName, seq: number, kind: number, ms: number): Error {
    const waiting = this.transport.waitingOn(this.id, kind, seq);
    let who = waiting.length
      ? `still waiting for rank${waiting.length > 1 ? 's' : ''} ${waiting.join(', ')}`
      : 'still sending';
    const behind = this.id === 0 && kind === KIND_COLLECTIVE ? (this.transport.ranksBehind?.(seq) ?? []) : [];
    if (behind.length) who = `rank${behind.length > 1 ? 's' : ''} ${behind.join(', ')} never entered it; ${who}`;
    const err = new CollectiveTimeoutError(
      `${this.where(op, seq)} timed out after ${ms} ms: ${who}`,
      op,
      seq,
      waiting[0],
    );
    this.transport.abort(new PeerFailure(this.globalRank, `${op} #${seq} (group ${this.id}) timed out there`));
    return err;
  }
}

function divide(a: WorkArray, n: number): void {
  for (let i = 0; i < a.length; i++) a[i]! /= n;
}

function rowsOf(buf: CommBuffer): { rows: number; rowElems: number; rest: number[] } {
  if (isTensor(buf)) {
    if (buf.shape.length === 0) return { rows: 1, rowElems: 1, rest: [] };
    const rest = buf.shape.slice(1);
    return { rows: buf.shape[0]!, rowElems: rest.reduce((a, b) => a * b, 1), rest };
  }
  return { rows: buf.length, rowElems: 1, rest: [] };
}

function checkSplits(splits: readonly number[], p: number, what: string): number[] {
  if (!Array.isArray(splits) || splits.length !== p)
    throw new RangeError(
      `allToAll: ${what} must list one count per rank (${p}), got ${Array.isArray(splits) ? splits.length : typeof splits}`,
    );
  for (const c of splits)
    if (!Number.isInteger(c) || c < 0)
      throw new RangeError(`allToAll: ${what} must be non-negative integers, got ${JSON.stringify(splits)}`);
  return [...splits];
}

function checkTag(tag: number): void {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffffff)
    throw new RangeError(`tag must be an integer in [0, 2^32), got ${tag}`);
}

function offsets(counts: readonly number[], unit: number): number[] {
  const out = [0];
  for (const c of counts) out.push(out[out.length - 1]! + c * unit);
  return out;
}

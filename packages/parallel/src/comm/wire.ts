// The wire format shared by byte-stream transports (shared-memory rings, TCP): a 24-byte header
// (group, kind/op, sequence, step, payload length) then the payload. The mailbox matches arriving
// messages to posted receives by (peer, group, kind, sequence, step), so operations of different
// groups may interleave on one link, and copies a payload straight into the receiver's buffer.
import { giveScratch, takeScratch } from './buffers.js';
import { opNameOf, type PeerFailure } from './errors.js';

export const HEADER_BYTES = 24;

/** Point-to-point traffic and collectives count their sequence numbers separately. */
export const KIND_COLLECTIVE = 0;
export const KIND_P2P = 1;
/** Link-level messages (goodbye, abort) that a transport handles itself. */
export const KIND_CONTROL = 2;
export const CONTROL_BYE = 1;
export const CONTROL_ABORT = 2;

export interface Tag {
  group: number;
  kind: number;
  op: number;
  seq: number;
  step: number;
}

export function encodeHeader(tag: Tag, length: number): Uint8Array {
  const h = new Uint8Array(HEADER_BYTES);
  const v = new DataView(h.buffer);
  v.setUint32(0, tag.group, true);
  v.setUint32(4, (tag.kind << 16) | tag.op, true);
  v.setUint32(8, tag.seq >>> 0, true);
  v.setUint32(12, tag.step >>> 0, true);
  v.setUint32(16, length % 2 ** 32, true);
  v.setUint32(20, Math.floor(length / 2 ** 32), true);
  return h;
}

function decodeHeader(h: Uint8Array): { tag: Tag; length: number } {
  const v = new DataView(h.buffer, h.byteOffset, HEADER_BYTES);
  const ko = v.getUint32(4, true);
  return {
    tag: {
      group: v.getUint32(0, true),
      kind: ko >>> 16,
      op: ko & 0xffff,
      seq: v.getUint32(8, true),
      step: v.getUint32(12, true),
    },
    length: v.getUint32(16, true) + v.getUint32(20, true) * 2 ** 32,
  };
}

/**
 * A message that arrives before its receive is posted (its sender ran ahead) lands in memory of its
 * own and is copied into place when the receive comes. Up to this size that memory is scratch reused
 * between messages (`takeScratch`): a fresh array per message cost an allocation, zero-filling and
 * garbage-collector work on every operation of a back-to-back loop of small collectives, where the
 * peer's next message often arrives in the same read as the one awaited. Larger ones are normally
 * held in the kernel until their receive is posted (StreamParser's `deferBytes`) and land in place.
 */
const EARLY_SCRATCH_MAX_BYTES = 1 << 20;

const keyOf = (peer: number, t: Tag): string => `${peer}:${t.group >>> 0}:${t.kind}:${t.seq >>> 0}:${t.step >>> 0}`;

/** How many sequence numbers back, per (peer, group, kind), OpLog remembers the op of each. */
const OP_LOG_SEQS = 64;

/**
 * The op each (peer, group, kind, seq) was seen with, in a ring of OP_LOG_SEQS slots per (peer,
 * group, kind) indexed by seq: no key to build per message. (A Map keyed by a string per message,
 * evicting its oldest entry past 4,096, cost ~30 us per 4-rank all-to-all: V8 steps over every
 * deleted entry to find the oldest one.) A sequence number OP_LOG_SEQS or more operations older than
 * one sharing its slot is forgotten, so a mismatch that old may go unnoticed; none is ever reported
 * falsely.
 */
class OpLog {
  private readonly logs = new Map<number, Map<number, { seqs: Float64Array; ops: Uint16Array }>>();

  /** Records the op of (peer, group, kind, seq); returns the other op if one was seen there before. */
  note(peer: number, t: Tag): number | null {
    let byLink = this.logs.get(peer);
    if (!byLink) this.logs.set(peer, (byLink = new Map()));
    const link = (t.group >>> 0) * 65536 + t.kind; // kinds are 16 bits on the wire
    let log = byLink.get(link);
    if (!log)
      byLink.set(link, (log = { seqs: new Float64Array(OP_LOG_SEQS).fill(-1), ops: new Uint16Array(OP_LOG_SEQS) }));
    const seq = t.seq >>> 0;
    const slot = seq % OP_LOG_SEQS;
    if (log.seqs[slot] === seq) return log.ops[slot] === t.op ? null : log.ops[slot]!;
    log.seqs[slot] = seq;
    log.ops[slot] = t.op;
    return null;
  }
}

interface Posted {
  peer: number;
  tag: Tag;
  into: Uint8Array | undefined;
  resolve(b: Uint8Array): void;
  reject(e: Error): void;
}

interface Arrival {
  data: Uint8Array;
  /** `data` is a view of scratch memory, given back once the payload is copied into its receive. */
  scratch: boolean;
  op: number;
  done: boolean;
  /** A receive posted while the message was still arriving into a buffer of its own. */
  late: Posted | undefined;
}

export class Mailbox {
  private readonly posted = new Map<string, Posted>();
  private readonly early = new Map<string, Arrival>();
  private readonly current = new Map<number, { key: string; posted?: Posted; arrival?: Arrival; dest: Uint8Array }>();
  failure: PeerFailure | null = null;
  private readonly closedPeers = new Map<number, PeerFailure>();
  /** Per peer: called once when a receive from that peer is posted while its link holds a message at
   *  its header (see `whenPosted`). */
  private readonly postWatch = new Map<number, () => void>();
  /** Posted receives per peer (see `hasPostedFrom`). */
  private readonly postedFrom = new Map<number, number>();
  /** The op each (peer, group, kind, seq) was seen with, to catch ranks running different operations. */
  private readonly opSeen = new OpLog();

  /** Receives the message `tag` from `peer`; into (if given) must have exactly the sent length. */
  recv(peer: number, tag: Tag, into?: Uint8Array): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      const key = keyOf(peer, tag);
      const p: Posted = { peer, tag, into, resolve, reject };
      const clash = this.opSeen.note(peer, tag);
      if (clash !== null) return reject(this.mismatch(p, clash, into?.byteLength ?? 0)!);
      const a = this.early.get(key);
      if (!a) {
        const gone = this.closedPeers.get(peer);
        if (gone) return reject(gone);
        if (this.posted.has(key))
          return reject(new Error(`two receives posted for the same message from rank ${peer} (${key})`));
        this.post(key, p);
        const watch = this.postWatch.get(peer);
        if (watch) {
          this.postWatch.delete(peer);
          queueMicrotask(watch);
        }
        return;
      }
      this.early.delete(key);
      if (a.done) this.deliverEarly(p, a);
      else a.late = p;
    });
  }

  private deliverEarly(p: Posted, a: Arrival): void {
    const err = this.mismatch(p, a.op, a.data.byteLength);
    if (err) p.reject(err);
    else if (p.into) {
      p.into.set(a.data);
      p.resolve(p.into);
    } else p.resolve(a.scratch ? a.data.slice() : a.data); // a receive without `into` owns what it gets
    if (a.scratch) giveScratch(a.data.buffer as ArrayBuffer);
  }

  private mismatch(p: Posted, op: number, length: number): Error | null {
    if (op !== p.tag.op)
      return new Error(
        `rank ${p.peer} sent ${opNameOf(op)} data for operation #${p.tag.seq} of group ${p.tag.group}, but this rank runs ` +
          `${opNameOf(p.tag.op)} as #${p.tag.seq}: every rank must call the group's operations in the same order`,
      );
    if (p.into && p.into.byteLength !== length)
      return new Error(
        `rank ${p.peer} sent ${length} bytes for ${opNameOf(op)} #${p.tag.seq} (step ${p.tag.step}); this rank expected ` +
          `${p.into.byteLength}: ranks disagree on the buffer size`,
      );
    return null;
  }

  /** Calls `onPosted` (once, from a microtask) when the next receive from `peer` of a message that has
   *  not arrived is posted: the held one (it can land in place now) or another, which may be queued
   *  behind it on the link. Returns a function that cancels the watch. */
  whenPosted(peer: number, onPosted: () => void): () => void {
    this.postWatch.set(peer, onPosted);
    return () => {
      if (this.postWatch.get(peer) === onPosted) this.postWatch.delete(peer);
    };
  }

  /** True if a receive for message `tag` from `peer` is posted. */
  isPosted(peer: number, tag: Tag): boolean {
    return this.posted.has(keyOf(peer, tag));
  }

  /** True if any receive from `peer` is posted and waiting for its message. */
  hasPostedFrom(peer: number): boolean {
    return (this.postedFrom.get(peer) ?? 0) > 0;
  }

  private post(key: string, p: Posted): void {
    this.posted.set(key, p);
    this.postedFrom.set(p.peer, (this.postedFrom.get(p.peer) ?? 0) + 1);
  }

  /** Takes the posted receive `key` off the list (it is matched, or failed). */
  private unpost(key: string): Posted | undefined {
    const p = this.posted.get(key);
    if (!p) return undefined;
    this.posted.delete(key);
    this.postedFrom.set(p.peer, this.postedFrom.get(p.peer)! - 1);
    return p;
  }

  /** The link parser found a header from `peer`: returns where the payload goes. */
  begin(peer: number, tag: Tag, length: number): Uint8Array {
    const key = keyOf(peer, tag);
    const clash = this.opSeen.note(peer, tag);
    if (clash !== null) {
      // The peer runs another operation at this point: fail what this rank waits for from it there.
      for (const [k, p] of this.posted)
        if (p.peer === peer && p.tag.group === tag.group && p.tag.kind === tag.kind && p.tag.seq === tag.seq) {
          this.unpost(k);
          p.reject(this.mismatch(p, tag.op, length)!);
        }
    }
    const p = this.posted.get(key);
    if (p && !this.mismatch(p, tag.op, length) && p.into) {
      this.unpost(key);
      this.current.set(peer, { key, posted: p, dest: p.into });
      return p.into;
    }
    // A posted receive without `into` (or a mismatched one) gets the buffer itself: no scratch then.
    const scratch = !p && length > 0 && length <= EARLY_SCRATCH_MAX_BYTES;
    const data = scratch ? new Uint8Array(takeScratch(length, 2 * length), 0, length) : new Uint8Array(length);
    const arrival: Arrival = { data, scratch, op: tag.op, done: false, late: undefined };
    if (p) {
      this.unpost(key);
      arrival.late = p;
    } else this.early.set(key, arrival);
    this.current.set(peer, { key, arrival, dest: arrival.data });
    return arrival.data;
  }

  /** The payload of the message begun from `peer` is complete. */
  end(peer: number): void {
    const c = this.current.get(peer);
    if (!c) return;
    this.current.delete(peer);
    if (c.posted) return c.posted.resolve(c.dest);
    const a = c.arrival!;
    a.done = true;
    if (a.late) {
      this.early.delete(c.key);
      this.deliverEarly(a.late, a);
    }
  }

  /** Fails every posted and future receive (the group cannot continue once a peer is lost). */
  fail(f: PeerFailure): void {
    if (this.failure) return;
    this.failure = f;
    for (const p of this.posted.values()) p.reject(f);
    this.posted.clear();
    this.postedFrom.clear();
    for (const a of this.early.values()) a.late?.reject(f);
    for (const c of this.current.values()) c.arrival?.late?.reject(f);
  }

  /** A peer left cleanly: receives from it that are pending or posted later fail; others go on. */
  closePeer(f: PeerFailure): void {
    this.closedPeers.set(f.peer, f);
    for (const [key, p] of this.posted)
      if (p.peer === f.peer) {
        this.unpost(key);
        p.reject(f);
      }
  }

  /** Global ranks this rank still waits for in operation `seq` of `group`. */
  waitingOn(group: number, kind: number, seq: number): number[] {
    const out = new Set<number>();
    for (const p of this.posted.values())
      if (p.tag.group === group && p.tag.kind === kind && p.tag.seq === seq) out.add(p.peer);
    for (const [peer, c] of this.current) {
      const p = c.posted ?? c.arrival?.late;
      if (p && p.tag.group === group && p.tag.kind === kind && p.tag.seq === seq) out.add(peer);
    }
    return [...out].sort((a, b) => a - b);
  }
}

/** Splits one incoming byte stream into messages and hands payload bytes to the mailbox. */
export class StreamParser {
  private readonly head = new Uint8Array(HEADER_BYTES);
  private headFill = 0;
  private dest: Uint8Array | null = null;
  private fill = 0;

  private control: { op: number; data: Uint8Array } | null = null;
  /** A message held back at its header (see `deferBytes`), and the bytes read after that header. */
  private paused: { tag: Tag; length: number; rest: Uint8Array } | null = null;

  constructor(
    private readonly peer: number,
    private readonly mailbox: Mailbox,
    /** Receives link-level (KIND_CONTROL) messages; without it they go to the mailbox. */
    private readonly onControl?: (op: number, payload: Uint8Array) => void,
    /**
     * If set, a message of at least this many bytes whose receive is not posted yet stops feed() at
     * its header (feed returns false; the link stops reading and calls resume() once the receive is
     * posted, see `held` and Mailbox.whenPosted). The payload waits in the kernel and then lands in
     * place, instead of in a fresh buffer of its own (page faults, and a second copy).
     */
    private readonly deferBytes?: number,
  ) {}

  /**
   * Consumes `chunk` (copying it out; the caller may reuse the memory afterwards). Returns false if
   * it stopped at a message held back for its receive (see `deferBytes`); nothing more may be fed
   * until resume() returns true.
   */
  feed(chunk: Uint8Array): boolean {
    let off = 0;
    while (off < chunk.byteLength) {
      if (!this.dest) {
        const n = Math.min(HEADER_BYTES - this.headFill, chunk.byteLength - off);
        this.head.set(chunk.subarray(off, off + n), this.headFill);
        this.headFill += n;
        off += n;
        if (this.headFill < HEADER_BYTES) return true;
        this.headFill = 0;
        const { tag, length } = decodeHeader(this.head);
        if (
          this.deferBytes !== undefined &&
          length >= this.deferBytes &&
          tag.kind !== KIND_CONTROL &&
          !this.mailbox.isPosted(this.peer, tag) &&
          !this.mailbox.hasPostedFrom(this.peer) // a receive posted for a later message must not wait behind it
        ) {
          this.paused = { tag, length, rest: chunk.slice(off) };
          return false;
        }
        this.begin(tag, length);
      } else {
        const n = Math.min(this.dest.byteLength - this.fill, chunk.byteLength - off);
        this.dest.set(chunk.subarray(off, off + n), this.fill);
        this.fill += n;
        off += n;
      }
      this.finishIfComplete();
    }
    return true;
  }

  /** The message feed() stopped at (see `deferBytes`), if any. */
  get held(): Tag | null {
    return this.paused?.tag ?? null;
  }

  /** Goes on after feed() returned false: the held message lands where its receive is posted by now,
   *  or in a buffer of its own. Returns false if it stopped at another held message. */
  resume(): boolean {
    const p = this.paused;
    if (!p) return true;
    this.paused = null;
    this.begin(p.tag, p.length);
    this.finishIfComplete();
    return this.feed(p.rest);
  }

  private begin(tag: Tag, length: number): void {
    if (tag.kind === KIND_CONTROL && this.onControl) {
      this.control = { op: tag.op, data: new Uint8Array(length) };
      this.dest = this.control.data;
    } else this.dest = this.mailbox.begin(this.peer, tag, length);
    this.fill = 0;
  }

  /**
   * Where the link's next read may land directly: the rest of the payload now arriving, if at least
   * `min` bytes of it remain (else null, and the link reads into its own buffer and calls feed).
   * Reading large payloads in place saves the copy out of the link's buffer.
   */
  directTarget(min: number): Uint8Array | null {
    if (!this.dest || this.dest.byteLength - this.fill < min) return null;
    return this.dest.subarray(this.fill);
  }

  /** `n` bytes were read straight into the last directTarget(). */
  advance(n: number): void {
    if (!this.dest || this.fill + n > this.dest.byteLength)
      throw new Error(`internal: ${n} bytes read past the end of the payload being received`);
    this.fill += n;
    this.finishIfComplete();
  }

  private finishIfComplete(): void {
    if (!this.dest || this.fill !== this.dest.byteLength) return;
    this.dest = null;
    const c = this.control;
    this.control = null;
    if (c) this.onControl!(c.op, c.data);
    else this.mailbox.end(this.peer);
  }

  /** True between messages (a close here loses nothing in flight). */
  get idle(): boolean {
    return this.dest === null && this.headFill === 0 && this.paused === null;
  }
}

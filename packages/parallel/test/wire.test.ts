// The byte-stream parser as the tcp transport drives it: reads of at most 64 KiB into the link's own
// buffer, reads straight into a payload's destination once enough of it is left, and large messages
// held at their header until their receive is posted. Streams of random messages (empty, small,
// larger than the read buffer, ragged sizes) cut into random reads must arrive intact whichever
// order the receives are posted in.
import { Rng } from '@dsv3/core';
import { describe, expect, it } from 'vitest';
import { giveScratch, takeScratch } from '../src/comm/buffers.js';
import { KIND_COLLECTIVE, Mailbox, StreamParser, encodeHeader, type Tag } from '../src/comm/wire.js';

const READ = 64 << 10;
const PEER = 3;
const tagOf = (i: number): Tag => ({ group: 0, kind: KIND_COLLECTIVE, op: 1, seq: 1, step: i });

function payload(i: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, j) => (i * 131 + j * 7 + (j >> 8)) & 255);
}

/** The first index where a and b differ (-1 if equal; a length mismatch counts). */
function differsAt(a: Uint8Array, b: Uint8Array): number {
  if (a.byteLength !== b.byteLength) return Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Feeds `stream` to `parser` as the tcp link does; `available` bounds each read (what the kernel holds). */
function pump(parser: StreamParser, stream: Uint8Array, rng: Rng, onPause: () => void): { direct: number } {
  const own = new Uint8Array(READ);
  let off = 0;
  let direct = 0;
  while (off < stream.byteLength) {
    const available = Math.min(stream.byteLength - off, 1 + rng.integer(0, 300_000));
    const into = parser.directTarget(READ);
    if (into) {
      const n = Math.min(available, into.byteLength);
      into.set(stream.subarray(off, off + n));
      parser.advance(n);
      direct += n;
      off += n;
      continue;
    }
    const n = Math.min(available, READ);
    own.set(stream.subarray(off, off + n));
    off += n;
    let more = parser.feed(own.subarray(0, n));
    own.fill(0xee); // the link's buffer is reused: the parser must have copied what it keeps
    while (!more) {
      onPause();
      more = parser.resume();
    }
  }
  return { direct };
}

describe('StreamParser with reads in place and held messages', () => {
  for (const seed of [1, 2, 3]) {
    it(`random messages, random reads, receives posted before, during a hold, and after (seed ${seed})`, async () => {
      const rng = new Rng(seed);
      const sizes = Array.from({ length: 40 }, (_, i) =>
        i % 7 === 0 ? 0 : i % 3 === 0 ? READ + rng.integer(-3, 400_000) : rng.integer(1, 5000),
      );
      const parts: Uint8Array[] = [];
      for (const [i, n] of sizes.entries()) parts.push(encodeHeader(tagOf(i), n), payload(i, n));
      const stream = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
      let at = 0;
      for (const p of parts) {
        stream.set(p, at);
        at += p.byteLength;
      }
      const mailbox = new Mailbox();
      const parser = new StreamParser(PEER, mailbox, undefined, READ);
      // The first receives are posted up front (no message holds while one of them waits), then in
      // turns when the parser holds a message, and after.
      const upFront = 8 + 4 * seed;
      const when = sizes.map((_, i) => (i < upFront ? 0 : 1 + (Math.floor(i / 3 + seed) % 2)));
      const got = new Map<number, Promise<Uint8Array>>();
      const post = (i: number) => {
        const into = i % 2 === 0 ? new Uint8Array(sizes[i]!) : undefined;
        got.set(i, mailbox.recv(PEER, tagOf(i), into));
      };
      for (let i = 0; i < sizes.length; i++) if (when[i] === 0) post(i);
      let holds = 0;
      const { direct } = pump(parser, stream, rng, () => {
        holds++;
        for (let i = 0; i < sizes.length; i++) if (when[i] === 1 && !got.has(i)) return post(i);
      });
      for (let i = 0; i < sizes.length; i++) if (!got.has(i)) post(i);
      for (const [i, n] of sizes.entries())
        expect(differsAt(await got.get(i)!, payload(i, n)), `message ${i} (${n} bytes)`).toBe(-1);
      expect(parser.idle).toBe(true);
      expect(holds).toBeGreaterThan(0);
      expect(direct).toBeGreaterThan(stream.byteLength / 2); // most bytes of large payloads were read in place
    });
  }

  it('a message that arrives with nothing posted is held once, then lands in a buffer of its own', async () => {
    const mailbox = new Mailbox();
    const parser = new StreamParser(PEER, mailbox, undefined, READ);
    const n = 3 * READ + 5;
    const frame = new Uint8Array(24 + n);
    frame.set(encodeHeader(tagOf(9), n));
    frame.set(payload(9, n), 24);
    expect(parser.feed(frame.subarray(0, 1000))).toBe(false); // held at its header
    expect(parser.idle).toBe(false);
    expect(parser.directTarget(READ)).toBeNull();
    expect(parser.resume()).toBe(true); // still not posted: it goes on into a buffer of its own
    const rest = parser.directTarget(READ)!;
    expect(rest.byteLength).toBe(n - (1000 - 24));
    rest.set(frame.subarray(1000));
    parser.advance(rest.byteLength);
    expect(differsAt(await mailbox.recv(PEER, tagOf(9)), payload(9, n))).toBe(-1);
    expect(() => parser.advance(1)).toThrow(/read past the end/);
  });

  it('a held message resumes when its receive is posted (Mailbox.whenPosted) and lands in place', async () => {
    const mailbox = new Mailbox();
    const parser = new StreamParser(PEER, mailbox, undefined, READ);
    const n = 2 * READ + 11;
    const frame = new Uint8Array(24 + n);
    frame.set(encodeHeader(tagOf(4), n));
    frame.set(payload(4, n), 24);
    expect(parser.feed(frame.subarray(0, 500))).toBe(false);
    expect(parser.held).toEqual(tagOf(4));
    let fired = 0;
    const cancelled = mailbox.whenPosted(PEER, () => fired--);
    cancelled();
    mailbox.whenPosted(PEER, () => {
      fired++;
      expect(parser.resume()).toBe(true);
    });
    mailbox.recv(PEER + 1, tagOf(4), new Uint8Array(1)).catch(() => undefined); // another peer's: no effect
    await Promise.resolve();
    expect(fired).toBe(0); // nothing posted from PEER yet
    const into = new Uint8Array(n);
    const got = mailbox.recv(PEER, tagOf(4), into);
    await Promise.resolve();
    expect(fired).toBe(1);
    expect(parser.held).toBeNull();
    const rest = parser.directTarget(READ)!;
    expect(rest.buffer).toBe(into.buffer); // the rest of the payload is read straight into the receive
    rest.set(frame.subarray(500));
    parser.advance(rest.byteLength);
    expect(await got).toBe(into);
    expect(differsAt(into, payload(4, n))).toBe(-1);
  });

  it('a receive posted for a later message ends a hold at once; none starts while one is posted', async () => {
    const mailbox = new Mailbox();
    const parser = new StreamParser(PEER, mailbox, undefined, READ);
    const n = 2 * READ + 5;
    const frame = (t: number) => {
      const f = new Uint8Array(24 + n);
      f.set(encodeHeader(tagOf(t), n));
      f.set(payload(t, n), 24);
      return f;
    };
    const stream = new Uint8Array([...frame(1), ...frame(2)]);
    expect(parser.feed(stream.subarray(0, 100))).toBe(false); // message 1 held: nothing posted
    let fired = 0;
    mailbox.whenPosted(PEER, () => {
      fired++;
      expect(parser.resume()).toBe(true); // message 1 into a buffer of its own, the program waits for 2
    });
    const second = mailbox.recv(PEER, tagOf(2), new Uint8Array(n));
    await Promise.resolve();
    expect(fired).toBe(1);
    expect(parser.held).toBeNull();
    // With message 2's receive posted, its header does not hold it (it is posted); nor would any other
    // header hold while a receive from this peer waits.
    expect(parser.feed(stream.subarray(100))).toBe(true);
    expect(differsAt(await second, payload(2, n))).toBe(-1);
    expect(differsAt(await mailbox.recv(PEER, tagOf(1)), payload(1, n))).toBe(-1);
    const waiting = mailbox.recv(PEER, tagOf(7), new Uint8Array(1));
    expect(parser.feed(frame(3).subarray(0, 100))).toBe(true); // 3 not posted, but 7 is: no hold
    expect(mailbox.hasPostedFrom(PEER)).toBe(true);
    waiting.catch(() => undefined);
  });

  it('early messages of several sizes from several peers, interleaved, land in reused scratch intact', async () => {
    // Three peers' streams cut into random reads and fed in turns, so up to three early messages are
    // arriving into scratch at once; their receives are posted before, during and after arrival, with
    // and without `into`, in a scrambled order, over several rounds that reuse what earlier rounds gave
    // back. A scratch buffer given back too early, or to two messages, shows up as corrupted payloads.
    const rng = new Rng(7);
    const peers = [1, 2, 5];
    const sizes = [1, 100, 4096, 5000, 32 << 10, (32 << 10) + 3, READ - 1, READ + 9, 200_000, 1 << 20, (1 << 20) + 1];
    const mailbox = new Mailbox();
    const parsers = new Map(peers.map((peer) => [peer, new StreamParser(peer, mailbox)]));
    const bodyOf = (peer: number, i: number, n: number) => payload(peer * 1000 + i, n);
    const delivered: { what: string; r: Uint8Array; expected: Uint8Array }[] = [];
    for (let round = 0; round < 3; round++) {
      const tag = (i: number): Tag => ({ group: 0, kind: KIND_COLLECTIVE, op: 1, seq: round + 1, step: i });
      const order = sizes.map((n, i) => ({ n, i, k: rng.integer(0, 1000) })).sort((a, b) => a.k - b.k);
      const streams = new Map<number, { bytes: Uint8Array; off: number }>();
      for (const peer of peers) {
        const parts = order.flatMap(({ n, i }) => [encodeHeader(tag(i), n), bodyOf(peer, i, n)]);
        const bytes = new Uint8Array(parts.reduce((a, q) => a + q.byteLength, 0));
        let at = 0;
        for (const q of parts) {
          bytes.set(q, at);
          at += q.byteLength;
        }
        streams.set(peer, { bytes, off: 0 });
      }
      const got: { peer: number; i: number; into?: Uint8Array; p: Promise<Uint8Array> }[] = [];
      const post = (peer: number, i: number) => {
        const into = (peer + i + round) % 2 === 0 ? new Uint8Array(sizes[i]!) : undefined;
        got.push({ peer, i, into, p: mailbox.recv(peer, tag(i), into) });
      };
      const posted = new Set<string>();
      const postSome = (count: number) => {
        for (let c = 0; c < count; c++) {
          const peer = peers[rng.integer(0, peers.length - 1)]!;
          const i = rng.integer(0, sizes.length - 1);
          if (posted.has(`${peer}:${i}`)) continue;
          posted.add(`${peer}:${i}`);
          post(peer, i);
        }
      };
      postSome(3); // a few before anything arrives
      const own = new Uint8Array(READ);
      while ([...streams.values()].some((s) => s.off < s.bytes.byteLength)) {
        for (const [peer, s] of streams) {
          if (s.off >= s.bytes.byteLength) continue;
          const parser = parsers.get(peer)!;
          const n = Math.min(s.bytes.byteLength - s.off, rng.integer(1, 90_000));
          const direct = parser.directTarget(READ);
          if (direct) {
            const m = Math.min(n, direct.byteLength);
            direct.set(s.bytes.subarray(s.off, s.off + m));
            parser.advance(m);
            s.off += m;
          } else {
            const m = Math.min(n, READ);
            own.set(s.bytes.subarray(s.off, s.off + m));
            expect(parser.feed(own.subarray(0, m))).toBe(true);
            own.fill(0xee);
            s.off += m;
          }
          if (rng.integer(0, 4) === 0) postSome(1); // some receives come while messages are arriving
        }
      }
      for (const peer of peers) for (let i = 0; i < sizes.length; i++) if (!posted.has(`${peer}:${i}`)) post(peer, i);
      const results = await Promise.all(got.map((g) => g.p));
      for (const [k, g] of got.entries()) {
        const r = results[k]!;
        const what = `round ${round}, rank ${g.peer}, message ${g.i} (${sizes[g.i]} bytes)`;
        if (g.into) expect(r, what).toBe(g.into);
        // Without `into` the receive owns an array of exactly its length, not a view of scratch.
        else expect(r.buffer.byteLength, what).toBe(sizes[g.i]);
        expect(differsAt(r, bodyOf(g.peer, g.i, sizes[g.i]!)), what).toBe(-1);
        delivered.push({ what, r, expected: bodyOf(g.peer, g.i, sizes[g.i]!) });
      }
      for (const parser of parsers.values()) expect(parser.idle).toBe(true);
    }
    // What the receives got is theirs: later rounds' traffic through the same scratch did not touch it.
    for (const d of delivered) expect(differsAt(d.r, d.expected), `${d.what}, at the end`).toBe(-1);
    // The scratch went back for reuse: a 1 MiB take now returns memory that held a payload, not a
    // fresh (zero-filled) buffer.
    const again = takeScratch(1 << 20, 2 << 20);
    expect(new Uint8Array(again).some((b) => b !== 0)).toBe(true);
    giveScratch(again);
  });
});

describe('Mailbox: ranks running different operations', () => {
  const tag = (op: number, seq: number, group = 0): Tag => ({ group, kind: KIND_COLLECTIVE, op, seq, step: 0 });

  it('a message of another operation at a posted receive fails it naming the rank and both operations', async () => {
    const mailbox = new Mailbox();
    const got = mailbox.recv(PEER, tag(1, 7), new Uint8Array(4)).catch((e: Error) => e);
    mailbox.begin(PEER, tag(3, 7), 4); // the peer's op 3 (ALLGATHER) where this rank runs op 1 (ALLREDUCE) as #7
    const e = await got;
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).toBe(
      `rank ${PEER} sent ALLGATHER data for operation #7 of group 0, but this rank runs ALLREDUCE as #7: ` +
        "every rank must call the group's operations in the same order",
    );
  });

  it('a receive posted after a message of another operation arrived is refused the same way', async () => {
    const mailbox = new Mailbox();
    mailbox.begin(PEER, tag(4, 9), 0);
    mailbox.end(PEER);
    await expect(mailbox.recv(PEER, tag(1, 9), new Uint8Array(0))).rejects.toThrow(
      /rank 3 sent ALLTOALL data for operation #9 of group 0, but this rank runs ALLREDUCE as #9/,
    );
  });

  it('sequence numbers that share a slot of the log, other groups and other peers are never mistaken for a mismatch', async () => {
    const mailbox = new Mailbox();
    // Operations #1..#300 alternate between two ops; group 5 and peer 4 run other ops at the same numbers.
    for (let seq = 1; seq <= 300; seq++) {
      const op = seq % 2 ? 1 : 3;
      for (const [peer, t] of [
        [PEER, tag(op, seq)],
        [PEER, tag(4, seq, 5)],
        [4, tag(5, seq)],
      ] as const) {
        const into = new Uint8Array(1);
        const r = mailbox.recv(peer, t, into);
        mailbox.begin(peer, t, 1).set([seq & 255]);
        mailbox.end(peer);
        expect((await r)[0]).toBe(seq & 255);
      }
    }
    // An old operation's late message (#1, 299 operations back) is taken as what it says it is.
    const late = mailbox.recv(PEER, tag(1, 1), new Uint8Array(0));
    mailbox.begin(PEER, tag(1, 1), 0);
    mailbox.end(PEER);
    await expect(late).resolves.toBeInstanceOf(Uint8Array);
  });
});

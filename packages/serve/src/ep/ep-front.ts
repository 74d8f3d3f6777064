// Expert-parallel serving behind one OpenAI front end. Every rank of the EP group runs an engine core
// over its share of the requests (attention data-parallel) and steps in lockstep with the others
// (ExpertParallelServer.run); rank 0 also serves HTTP, and its ExpertParallelFrontCore — the StepCore
// under the front end's AsyncEngine — spreads the requests over the ranks. At the start of every
// lockstep iteration one all-to-all of bytes carries new requests and aborts from rank 0 to each rank
// and each rank's outputs and load back to rank 0: JSON, a few hundred bytes a step, small next to
// the MoE layers' traffic, and readable when debugging.
import type { ProcessGroup } from '@dsv3/parallel';
import type { EngineCore, EngineCoreStats } from '../engine-core.js';
import { EngineClosedError, EngineUnavailableError, type StepCore } from '../engine.js';
import { EngineCoreError } from '../engine-core.js';
import type { EngineRequest, RequestOutput } from '../sequence.js';
import { paramsFromWire, paramsToWire, type WireParams } from '../disagg/wire.js';
import type { ExpertParallelServer } from './ep-server.js';

interface WireRequest {
  id: string;
  promptIds: number[];
  params: WireParams;
}

/** rank 0 → rank r */
interface Downlink {
  add: WireRequest[];
  abort: string[];
  /** the front end is closing: leave the loop once no rank has work */
  stop: boolean;
}

interface RankLoad {
  running: number;
  waiting: number;
  freeBlocks: number;
  totalBlocks: number;
}

/** rank r → rank 0 */
interface Uplink {
  outputs: RequestOutput[];
  load: RankLoad;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One all-to-all of JSON messages (null: nothing for that rank); what each rank sent this one. */
async function exchangeJson(group: ProcessGroup, messages: readonly (object | null)[]): Promise<unknown[]> {
  const parts = messages.map((m) => (m === null ? new Uint8Array(0) : encoder.encode(JSON.stringify(m))));
  const send = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    send.set(p, at);
    at += p.length;
  }
  const got = await group
    .allToAll(
      send,
      parts.map((p) => p.length),
    )
    .wait();
  const out: unknown[] = [];
  at = 0;
  for (const n of got.outputSplits) {
    out.push(n ? JSON.parse(decoder.decode(got.output.subarray(at, at + n))) : null);
    at += n;
  }
  return out;
}

function loadOf(core: EngineCore): RankLoad {
  const s = core.stats();
  return { running: s.running, waiting: s.waiting, freeBlocks: s.freeBlocks, totalBlocks: s.totalBlocks };
}

function failed(id: string, promptTokens: number, error: string): RequestOutput {
  return { id, newTokens: [], finished: 'abort', promptTokens, cachedTokens: 0, error };
}

/** Adds a request that arrived over the wire; one the core refuses fails alone. */
function addFromWire(core: EngineCore, r: WireRequest, outbox: RequestOutput[]): void {
  try {
    core.add({ id: r.id, promptIds: r.promptIds, params: paramsFromWire(r.params) });
  } catch (e) {
    outbox.push(failed(r.id, r.promptIds.length, e instanceof Error ? e.message : String(e)));
  }
}

/** Rank 0's engine core for the front end: requests run on every rank of the EP group. */
export class ExpertParallelFrontCore implements StepCore {
  /** the rank each request in flight runs on, and its prompt length */
  private readonly home = new Map<string, { rank: number; promptTokens: number }>();
  private readonly down: Downlink[];
  private readonly loads: RankLoad[];
  private readonly outputs: RequestOutput[] = [];
  private wake: (() => void) | null = null;
  private lostReason: string | null = null;
  private closing = false;
  /** Settles when the lockstep loop has ended (after close(), or when a rank was lost). */
  readonly finished: Promise<void>;

  constructor(
    readonly server: ExpertParallelServer,
    readonly core: EngineCore,
  ) {
    const P = server.group.size;
    if (server.group.rank !== 0)
      throw new RangeError(`the front end runs on rank 0 of the EP group; this is rank ${server.group.rank}`);
    this.down = Array.from({ length: P }, () => ({ add: [], abort: [], stop: false }));
    this.loads = Array.from({ length: P }, () => ({ running: 0, waiting: 0, freeBlocks: 0, totalBlocks: 0 }));
    this.finished = server
      .run(core, {
        exchange: () => this.exchange(),
        onOutputs: (outs) => {
          for (const o of outs) this.emit(o);
        },
        more: () => !this.closing || this.home.size > 0,
      })
      .catch((e: unknown) => this.lose(e));
  }

  // ---- StepCore ----

  get maxModelLen(): number {
    return this.core.maxModelLen;
  }
  get executor(): { vocabSize: number } {
    return this.core.executor;
  }
  get hasWork(): boolean {
    return this.home.size > 0 || this.outputs.length > 0;
  }

  add(req: EngineRequest): void {
    if (this.lostReason !== null)
      throw new EngineUnavailableError(`the expert-parallel group is down: ${this.lostReason}`);
    if (this.closing) throw new EngineClosedError();
    if (this.home.has(req.id)) throw new EngineCoreError(`request id ${req.id} is already in the engine`);
    this.core.validate(req);
    const rank = this.pick();
    this.home.set(req.id, { rank, promptTokens: req.promptIds.length });
    this.down[rank]!.add.push({ id: req.id, promptIds: [...req.promptIds], params: paramsToWire(req.params) });
  }

  abort(id: string): void {
    const h = this.home.get(id);
    if (!h) return;
    this.home.delete(id);
    this.down[h.rank]!.abort.push(id);
    this.notify();
  }

  async step(): Promise<RequestOutput[]> {
    if (!this.outputs.length && this.home.size) await new Promise<void>((r) => (this.wake = r));
    return this.outputs.splice(0);
  }

  /** Running and waiting over all ranks; the cache figures sum the ranks' caches; the rest is rank 0's. */
  stats(): EngineCoreStats {
    const s = this.core.stats();
    this.loads[0] = loadOf(this.core);
    const queued = this.down.reduce((n, d) => n + d.add.length, 0);
    const sum = (f: keyof RankLoad): number => this.loads.reduce((n, l) => n + l[f], 0);
    const free = sum('freeBlocks');
    const total = sum('totalBlocks');
    return {
      ...s,
      running: sum('running'),
      waiting: sum('waiting') + queued,
      freeBlocks: free,
      totalBlocks: total,
      kvUsage: total ? 1 - free / total : 0,
    };
  }

  /** Lets the ranks finish what runs, then ends the lockstep loop on every rank. */
  async close(): Promise<void> {
    this.closing = true;
    await this.finished;
  }

  // ---- the lockstep loop ----

  /** The rank with the fewest requests (in flight and queued there). */
  private pick(): number {
    const n = this.loads.map(() => 0);
    for (const h of this.home.values()) n[h.rank]!++;
    let best = 0;
    for (let r = 1; r < n.length; r++) if (n[r]! < n[best]!) best = r;
    return best;
  }

  private async exchange(): Promise<void> {
    const mine = this.take(0);
    const outbox: RequestOutput[] = [];
    for (const r of mine.add) addFromWire(this.core, r, outbox);
    for (const id of mine.abort) this.core.abort(id);
    for (const o of outbox) this.emit(o);
    const msgs = this.down.map((_, r) => (r === 0 ? null : this.take(r)));
    const got = (await exchangeJson(this.server.group, msgs)) as (Uplink | null)[];
    got.forEach((u, r) => {
      if (!u) return;
      this.loads[r] = u.load;
      for (const o of u.outputs) this.emit(o);
    });
  }

  /** The messages queued for rank r (and a fresh queue). */
  private take(r: number): Downlink {
    const d = this.down[r]!;
    this.down[r] = { add: [], abort: [], stop: false };
    return { ...d, stop: this.closing };
  }

  private emit(o: RequestOutput): void {
    if (!this.home.has(o.id)) return;
    if (o.finished) this.home.delete(o.id);
    this.outputs.push(o);
    this.notify();
  }

  /** A rank was lost (or the loop failed): every request in flight fails; new ones are refused. */
  private lose(e: unknown): void {
    this.lostReason = e instanceof Error ? e.message : String(e);
    for (const [id, h] of this.home)
      this.emit(failed(id, h.promptTokens, `the expert-parallel group failed: ${this.lostReason}`));
    this.home.clear();
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
}

/**
 * Serves on rank r > 0 of the EP group: takes requests from rank 0's front end, steps in lockstep and
 * sends the outputs back, until the front end closes (or the group fails: the promise rejects).
 */
export async function serveExpertParallelRank(server: ExpertParallelServer, core: EngineCore): Promise<void> {
  const { group } = server;
  if (group.rank === 0) throw new RangeError('rank 0 serves through ExpertParallelFrontCore');
  let stop = false;
  const outbox: RequestOutput[] = [];
  await server.run(core, {
    onOutputs: (outs) => outbox.push(...outs),
    more: () => !stop,
    exchange: async () => {
      const msgs: (Uplink | null)[] = Array.from({ length: group.size }, () => null);
      msgs[0] = { outputs: outbox.splice(0), load: loadOf(core) };
      const got = await exchangeJson(group, msgs);
      const d = got[0] as Downlink | null;
      if (!d) return;
      for (const r of d.add) addFromWire(core, r, outbox);
      for (const id of d.abort) core.abort(id);
      if (d.stop) stop = true;
    },
  });
}

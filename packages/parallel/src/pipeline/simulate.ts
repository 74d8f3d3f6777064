// Simulates a schedule: every rank runs its operations in order, a send never blocks (its message
// arrives `p2p` later), a receive waits for its message. Checks every dependency (a chunk's input or
// output gradient is there before it runs, weights after their deferred backward, each chunk computed
// exactly once by its owner, every message received) and reports deadlocks with what each rank waits
// for. Returns makespan, per-rank busy/bubble time and peak in-flight activations.
import { chunkOwner } from './schedule.js';
import type { Chunk, PipelineOp, Schedule } from './types.js';

export interface OpCosts {
  /** Forward of one chunk. */
  F: number;
  /** Backward for inputs only (the table's B minus W). */
  B: number;
  /** Backward for weights. */
  W: number;
  /** An overlapped forward + full backward pair (default F + B + W: no overlap gain). */
  FB?: number;
  /** Point-to-point transfer latency of one message (default 0). */
  p2p?: number;
  /** Per-op cost overriding the above for compute ops (e.g. measured durations of a real run). */
  costOf?: (rank: number, index: number, op: PipelineOp) => number;
}

export interface TimedOp {
  index: number;
  op: PipelineOp;
  start: number;
  end: number;
}

export interface RankReport {
  rank: number;
  /** Time spent computing. */
  busy: number;
  /** makespan − busy: time this rank waits within the step. */
  bubble: number;
  finish: number;
  /** Most chunks whose forward ran and whose backward (weights included) has not finished. */
  peakActivations: number;
  /** Model stages whose parameters this rank holds. */
  stagesHeld: number;
  timeline: TimedOp[];
}

export interface SimulationResult {
  makespan: number;
  ranks: RankReport[];
  /** Largest per-rank bubble. */
  maxBubble: number;
  /** Σ bubble / (ranks · makespan). */
  bubbleFraction: number;
  peakActivations: number;
  /** Copies of the model's parameters over all ranks (DualPipe: 2). */
  parameterCopies: number;
}

const key = (c: Chunk): string => `${c.stage}:${c.microBatch}`;
const describe = (op: PipelineOp): string => JSON.stringify(op);

class ScheduleError extends Error {
  constructor(s: Schedule, rank: number, index: number, op: PipelineOp, why: string) {
    super(`${s.kind} (ranks ${s.ranks}, chunks ${s.chunks}): rank ${rank} op #${index} ${describe(op)}: ${why}`);
    this.name = 'ScheduleError';
  }
}

interface Message {
  from: number;
  to: number;
  arrival: number;
  received: boolean;
}

interface RankState {
  pc: number;
  time: number;
  busy: number;
  forwardDone: Set<string>;
  backwardDone: Set<string>;
  activationsIn: Set<string>;
  gradientsIn: Set<string>;
  deferred: string[];
  live: Set<string>;
  peak: number;
  timeline: TimedOp[];
}

export function simulate(s: Schedule, costs: OpCosts = { F: 1, B: 1, W: 1 }): SimulationResult {
  const fb = costs.FB ?? costs.F + costs.B + costs.W;
  const p2p = costs.p2p ?? 0;
  const lastStage = s.stages - 1;
  const messages = new Map<string, Message>();
  const globalForward = new Set<string>();
  const globalBackward = new Set<string>();
  const st: RankState[] = s.ops.map(() => ({
    pc: 0,
    time: 0,
    busy: 0,
    forwardDone: new Set(),
    backwardDone: new Set(),
    activationsIn: new Set(),
    gradientsIn: new Set(),
    deferred: [],
    live: new Set(),
    peak: 0,
    timeline: [],
  }));

  const runForward = (r: number, i: number, op: PipelineOp, c: Chunk): void => {
    const x = st[r]!;
    if (chunkOwner(s, c) !== r)
      throw new ScheduleError(
        s,
        r,
        i,
        op,
        `forward of stage ${c.stage} micro-batch ${c.microBatch} belongs on rank ${chunkOwner(s, c)}`,
      );
    if (globalForward.has(key(c))) throw new ScheduleError(s, r, i, op, 'this forward already ran');
    const input =
      c.stage === 0 ||
      x.activationsIn.has(key({ stage: c.stage - 1, microBatch: c.microBatch })) ||
      x.forwardDone.has(key({ stage: c.stage - 1, microBatch: c.microBatch }));
    if (!input)
      throw new ScheduleError(
        s,
        r,
        i,
        op,
        `its input (output of stage ${c.stage - 1}) was neither received nor computed here`,
      );
    globalForward.add(key(c));
    x.forwardDone.add(key(c));
    x.live.add(key(c));
    x.peak = Math.max(x.peak, x.live.size);
  };
  const runBackward = (r: number, i: number, op: PipelineOp, c: Chunk, deferW: boolean): void => {
    const x = st[r]!;
    if (!x.forwardDone.has(key(c))) throw new ScheduleError(s, r, i, op, 'backward before its forward');
    if (globalBackward.has(key(c))) throw new ScheduleError(s, r, i, op, 'this backward already ran');
    const next = { stage: c.stage + 1, microBatch: c.microBatch };
    const grad = c.stage === lastStage || x.gradientsIn.has(key(next)) || x.backwardDone.has(key(next));
    if (!grad)
      throw new ScheduleError(
        s,
        r,
        i,
        op,
        `its output gradient (from stage ${c.stage + 1}) was neither received nor computed here`,
      );
    globalBackward.add(key(c));
    x.backwardDone.add(key(c));
    if (deferW) x.deferred.push(key(c));
    else x.live.delete(key(c));
  };

  /** Runs rank r's next op if it can; false when it waits for a message or is finished. */
  const step = (r: number): boolean => {
    const x = st[r]!;
    const ops = s.ops[r]!;
    if (x.pc >= ops.length) return false;
    const i = x.pc;
    const op = ops[i]!;
    let cost = 0;
    switch (op.kind) {
      case 'recv': {
        const m = messages.get(`${op.payload}:${key(op)}`);
        if (!m) return false;
        if (m.from !== op.from || m.to !== r)
          throw new ScheduleError(s, r, i, op, `the matching message goes ${m.from} → ${m.to}`);
        if (m.received) throw new ScheduleError(s, r, i, op, 'message received twice');
        m.received = true;
        (op.payload === 'activation' ? x.activationsIn : x.gradientsIn).add(key(op));
        x.time = Math.max(x.time, m.arrival);
        break;
      }
      case 'send': {
        const done = op.payload === 'activation' ? x.forwardDone : x.backwardDone;
        if (!done.has(key(op)))
          throw new ScheduleError(s, r, i, op, `sends a ${op.payload} not yet computed on this rank`);
        const target = op.payload === 'activation' ? op.stage + 1 : op.stage - 1;
        if (target < 0 || target > lastStage) throw new ScheduleError(s, r, i, op, 'no stage receives this');
        const owner = chunkOwner(s, { stage: target, microBatch: op.microBatch });
        if (op.to !== owner)
          throw new ScheduleError(s, r, i, op, `stage ${target} runs on rank ${owner}, not ${op.to}`);
        const k = `${op.payload}:${key(op)}`;
        if (messages.has(k)) throw new ScheduleError(s, r, i, op, 'sent twice');
        messages.set(k, { from: r, to: op.to, arrival: x.time + p2p, received: false });
        break;
      }
      case 'F':
        runForward(r, i, op, op);
        cost = costs.F;
        break;
      case 'B':
        runBackward(r, i, op, op, op.deferW);
        cost = op.deferW ? costs.B : costs.B + costs.W;
        break;
      case 'FB':
        runForward(r, i, op, op.forward);
        runBackward(r, i, op, op.backward, false);
        cost = fb;
        break;
      case 'W': {
        const front = x.deferred.shift();
        if (front !== key(op))
          throw new ScheduleError(
            s,
            r,
            i,
            op,
            front ? `the oldest deferred backward is ${front}` : 'no deferred backward waits for weights',
          );
        x.live.delete(key(op));
        cost = costs.W;
        break;
      }
    }
    if (costs.costOf && op.kind !== 'send' && op.kind !== 'recv') cost = costs.costOf(r, i, op);
    if (cost > 0) x.timeline.push({ index: i, op, start: x.time, end: x.time + cost });
    x.time += cost;
    x.busy += cost;
    x.pc++;
    return true;
  };

  for (;;) {
    let progressed = false;
    for (let r = 0; r < s.ranks; r++) while (step(r)) progressed = true;
    if (st.every((x, r) => x.pc >= s.ops[r]!.length)) break;
    if (!progressed) {
      const waits = st.flatMap((x, r) =>
        x.pc < s.ops[r]!.length ? [`rank ${r} waits at op #${x.pc} ${describe(s.ops[r]![x.pc]!)}`] : [],
      );
      throw new Error(`${s.kind} (ranks ${s.ranks}, chunks ${s.chunks}): deadlock — ${waits.join('; ')}`);
    }
  }
  for (let st0 = 0; st0 < s.stages; st0++) {
    for (let m = 0; m < s.chunks; m++) {
      const c = key({ stage: st0, microBatch: m });
      if (!globalForward.has(c) || !globalBackward.has(c))
        throw new Error(
          `${s.kind}: stage ${st0} micro-batch ${m} never ${globalForward.has(c) ? 'ran backward' : 'ran forward'}`,
        );
    }
  }
  st.forEach((x, r) => {
    if (x.deferred.length)
      throw new Error(`${s.kind}: rank ${r} ends with weight gradients never computed for ${x.deferred.join(', ')}`);
  });
  for (const [k, m] of messages)
    if (!m.received) throw new Error(`${s.kind}: message ${k} from rank ${m.from} to ${m.to} never received`);

  const makespan = Math.max(...st.map((x) => x.time));
  const ranks = st.map((x, r) => ({
    rank: r,
    busy: x.busy,
    bubble: makespan - x.busy,
    finish: x.time,
    peakActivations: x.peak,
    stagesHeld: s.rankStages[r]!.length,
    timeline: x.timeline,
  }));
  const totalBubble = ranks.reduce((a, x) => a + x.bubble, 0);
  return {
    makespan,
    ranks,
    maxBubble: Math.max(...ranks.map((x) => x.bubble)),
    bubbleFraction: makespan > 0 ? totalBubble / (s.ranks * makespan) : 0,
    peakActivations: Math.max(...ranks.map((x) => x.peakActivations)),
    parameterCopies: s.rankStages.reduce((a, x) => a + x.length, 0) / s.stages,
  };
}

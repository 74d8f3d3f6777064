// A serving load, simulated step by step: clients with a fixed number of requests in flight, engines
// that batch continuously (every step brings each running sequence's cache toward all its tokens
// under one token budget and a cap on running sequences, running sequences first, oldest first), step
// times from serveStepSeconds. Deployments: one engine (one rank, or an expert-parallel unit of ranks
// in lockstep, requests spread over them), or disaggregated — a prefill engine computes the prompt's
// latents, ships them to a decode engine, which feeds the last prompt token and decodes.
import { kvBytesPerToken, type ModelConfig } from '@dsv3/model';
import type { ClusterSpec } from './cluster.js';
import { serveStepSeconds, type ServeNumerics, type StepWork } from './serve-step.js';

export interface ServeLoad {
  requests: number;
  /** Requests in flight at once (closed loop: each completion sends the next). */
  concurrency: number;
  /** Prompt tokens and generated tokens per request. */
  inputLen: number;
  outputLen: number;
}

export interface EngineLimits {
  /** Tokens fed per step, all sequences together. */
  maxBatchedTokens: number;
  /** Sequences running at once (per rank). */
  maxRunningSeqs: number;
}

export type ServeDeployment =
  | { kind: 'colocated'; ranks: number }
  | { kind: 'disaggregated'; prefill: EngineLimits; decode: EngineLimits };

export interface ServeLoadPrediction {
  /** Per request: time to first token and time per output token after it (s). */
  ttft: number[];
  tpot: number[];
  ttftP50: number;
  tpotP50: number;
  /** Generated tokens / (last completion − first arrival). */
  outputTokensPerSecond: number;
  makespan: number;
  steps: number;
  /** Median step time of each engine (s). */
  medianStep: number[];
}

interface Req {
  id: number;
  arrival: number;
  /** tokens the engine must hold in its cache before this request's next sample */
  target: number;
  computed: number;
  generated: number;
  first: number;
  done: number;
  rank: number;
}

interface Engine {
  ranks: number;
  limits: EngineLimits;
  time: number;
  waiting: Req[][];
  running: Req[][];
  inbox: { ready: number; req: Req }[];
  stepTimes: number[];
}

/** The median as dsv3-bench-serve reports it: the ⌈n/2⌉-th smallest. */
const p50 = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(s.length / 2) - 1)]!;
};

function engine(ranks: number, limits: EngineLimits): Engine {
  return {
    ranks,
    limits,
    time: 0,
    waiting: Array.from({ length: ranks }, () => []),
    running: Array.from({ length: ranks }, () => []),
    inbox: [],
    stepTimes: [],
  };
}

const busy = (e: Engine): boolean => e.waiting.some((q) => q.length) || e.running.some((q) => q.length);
const nextStart = (e: Engine): number =>
  busy(e) ? e.time : e.inbox.length ? Math.max(e.time, Math.min(...e.inbox.map((m) => m.ready))) : Infinity;

/** One rank's schedule: running sequences first, then waiting ones, under the budget and the cap. */
function schedule(e: Engine, r: number): { req: Req; start: number; count: number }[] {
  let budget = e.limits.maxBatchedTokens;
  const out: { req: Req; start: number; count: number }[] = [];
  for (const q of e.running[r]!) {
    if (budget <= 0) break;
    const count = Math.min(q.target - q.computed, budget);
    out.push({ req: q, start: q.computed, count });
    budget -= count;
  }
  const waiting = e.waiting[r]!;
  while (budget > 0 && waiting.length && e.running[r]!.length < e.limits.maxRunningSeqs) {
    const q = waiting.shift()!;
    e.running[r]!.push(q);
    const count = Math.min(q.target - q.computed, budget);
    out.push({ req: q, start: q.computed, count });
    budget -= count;
  }
  return out;
}

/**
 * Predicts a load on a deployment: TTFT and TPOT per request (their medians) and output tokens/s.
 * `cluster` describes one rank of the deployment (a disaggregated one has two: prefill and decode).
 */
export function simulateServeLoad(
  c: ModelConfig,
  cluster: ClusterSpec,
  numerics: ServeNumerics,
  load: ServeLoad,
  deployment: ServeDeployment,
  limits: EngineLimits,
): ServeLoadPrediction {
  for (const [k, v] of Object.entries(load))
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`serving load: ${k} must be a positive integer, got ${v}`);
  const disagg = deployment.kind === 'disaggregated';
  const engines = disagg
    ? [engine(1, deployment.prefill), engine(1, deployment.decode)]
    : [engine(deployment.ranks, limits)];
  const entry = engines[0]!;
  const decoder = engines.at(-1)!;
  // prefill → decode: the latents of the prompt but its last token, one message each way of the hand-off
  const latentBytes = kvBytesPerToken(c, numerics.kvBytes) * (load.inputLen - 1);
  const handOff = latentBytes / cluster.ibBandwidth + 3 * cluster.linkLatency;
  const reqs: Req[] = [];
  let sent = 0;
  const send = (t: number): void => {
    if (sent >= load.requests) return;
    const id = sent++;
    const req: Req = {
      id,
      arrival: t,
      target: disagg ? load.inputLen - 1 : load.inputLen,
      computed: 0,
      generated: 0,
      first: Number.NaN,
      done: Number.NaN,
      rank: id % entry.ranks,
    };
    reqs.push(req);
    entry.inbox.push({ ready: t, req });
  };
  for (let i = 0; i < load.concurrency; i++) send(0);
  let steps = 0;
  for (;;) {
    const e = engines.reduce((a, b) => (nextStart(b) < nextStart(a) ? b : a));
    const t0 = nextStart(e);
    if (!Number.isFinite(t0)) break;
    e.time = t0;
    e.inbox = e.inbox.filter((m) => {
      if (m.ready > t0) return true;
      e.waiting[m.req.rank]!.push(m.req);
      return false;
    });
    const chunks = Array.from({ length: e.ranks }, (_, r) => schedule(e, r));
    const works: StepWork[] = chunks.map((cs) => ({
      tokens: cs.reduce((a, x) => a + x.count, 0),
      keyPairs: cs.reduce((a, x) => a + x.count * x.start + (x.count * (x.count + 1)) / 2, 0),
      cacheRows: cs.reduce((a, x) => a + x.start + x.count, 0),
      // the forward returns the last row's logits of every segment, sampled or not
      logitRows: cs.length,
    }));
    const dt = serveStepSeconds(c, cluster, numerics, works).total;
    e.time += dt;
    e.stepTimes.push(dt);
    steps++;
    for (let r = 0; r < e.ranks; r++)
      for (const { req, count } of chunks[r]!) {
        req.computed += count;
        if (req.computed < req.target) continue;
        if (disagg && e === entry) {
          // prompt latents done: off to the decode engine, which feeds the last prompt token
          e.running[r]!.splice(e.running[r]!.indexOf(req), 1);
          req.target = load.inputLen;
          decoder.inbox.push({ ready: e.time + handOff, req });
          continue;
        }
        req.generated++;
        if (req.generated === 1) req.first = e.time;
        if (req.generated === load.outputLen) {
          req.done = e.time;
          e.running[r]!.splice(e.running[r]!.indexOf(req), 1);
          send(e.time);
        } else req.target++;
      }
  }
  const ttft = reqs.map((q) => q.first - q.arrival);
  const tpot = reqs.map((q) => (load.outputLen > 1 ? (q.done - q.first) / (load.outputLen - 1) : 0));
  const makespan = Math.max(...reqs.map((q) => q.done));
  return {
    ttft,
    tpot,
    ttftP50: p50(ttft),
    tpotP50: p50(tpot),
    outputTokensPerSecond: (load.requests * load.outputLen) / makespan,
    makespan,
    steps,
    medianStep: engines.map((x) => (x.stepTimes.length ? p50(x.stepTimes) : 0)),
  };
}

// One pipeline rank in a worker thread: builds its stages, runs the schedule `reps` times on demand and
// reports each step's wall-clock window and compute trace.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { Linear, Module, RMSNorm, add, crossEntropy, div, silu, tensor, type Tensor } from '@dsv3/core';
// Bench-only: one GEMM thread per rank, so ranks (threads) do not oversubscribe the cores.
import { setGemmThreads } from '../../core/src/cpu/gemm/index.js';
import { randomTensor64 } from '@dsv3/core/testing';
import { buildSchedule, runPipelineStep, type PointToPoint, type ScheduleKind } from '../src/index.js';

interface Setup {
  rank: number;
  ranks: number;
  kind: ScheduleKind;
  chunks: number;
  dim: number;
  rows: number;
  ports: Record<number, MessagePort>;
}
const w = workerData as Setup;
setGemmThreads(1);

class Stage extends Module {
  readonly norm: RMSNorm;
  readonly up: Linear;
  readonly down: Linear;
  readonly head: Linear | null;
  constructor(stage: number, last: boolean) {
    super();
    this.norm = this.child('norm', new RMSNorm(w.dim));
    this.up = this.child('up', new Linear(w.dim, 4 * w.dim, { seed: stage }));
    this.down = this.child('down', new Linear(4 * w.dim, w.dim, { seed: 100 + stage }));
    this.head = last ? this.child('head', new Linear(w.dim, 64, { seed: 999 })) : null;
  }
  forward(x: Tensor): Tensor {
    const y = add(x, this.down.forward(silu(this.up.forward(this.norm.forward(x)))));
    return this.head ? this.head.forward(y) : y;
  }
}

/** Point-to-point over MessagePorts: one port per peer, FIFO per port. */
function portComm(): PointToPoint {
  const queues = new Map<number, Tensor[]>();
  const waiting = new Map<number, ((t: Tensor) => void)[]>();
  for (const [peer, port] of Object.entries(w.ports)) {
    const p = Number(peer);
    port.on('message', (m: { shape: number[]; data: Float32Array }) => {
      const t = tensor(m.data, { shape: m.shape, dtype: 'f32' });
      const q = waiting.get(p);
      if (q?.length) q.shift()!(t);
      else (queues.get(p) ?? queues.set(p, []).get(p)!).push(t);
    });
  }
  return {
    rank: w.rank,
    size: w.ranks,
    async send(t, to) {
      const data = Float32Array.from(t.dataSync() as Float32Array);
      w.ports[to]!.postMessage({ shape: [...t.shape], data }, [data.buffer]);
    },
    recv(from) {
      const q = queues.get(from);
      if (q?.length) return Promise.resolve(q.shift()!);
      return new Promise((resolve) => (waiting.get(from) ?? waiting.set(from, []).get(from)!).push(resolve));
    },
  };
}

const schedule = buildSchedule(w.kind, { ranks: w.ranks, chunks: w.chunks });
const stages = new Map(schedule.rankStages[w.rank]!.map((s) => [s, new Stage(s, s === schedule.stages - 1)]));
const comm = portComm();
const inputs = Array.from({ length: w.chunks }, (_, m) =>
  tensor(randomTensor64([w.rows, w.dim], m).dataSync(), { shape: [w.rows, w.dim], dtype: 'f32' }),
);
const targets = Array.from({ length: w.chunks }, (_, m) =>
  tensor(
    Array.from({ length: w.rows }, (_, i) => (i + m) % 64),
    { dtype: 'i32' },
  ),
);

parentPort!.on('message', async (msg: { go: number }) => {
  for (const p of stages.values()) p.zeroGrad();
  const start = performance.timeOrigin + performance.now();
  const r = await runPipelineStep({
    schedule,
    comm,
    stages,
    input: (m) => inputs[m]!,
    loss: (o, m) => div(crossEntropy(o, targets[m]!), w.chunks),
  });
  const end = performance.timeOrigin + performance.now();
  const offset = performance.timeOrigin;
  parentPort!.postMessage({
    rep: msg.go,
    start,
    end,
    trace: r.trace.map((t) => ({ ...t, start: t.start + offset, end: t.end + offset })),
  });
});
parentPort!.postMessage({ ready: true });

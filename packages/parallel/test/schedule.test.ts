import { describe, expect, it } from 'vitest';
import {
  buildSchedule,
  scheduleError,
  simulate,
  SCHEDULE_KINDS,
  type PipelineOp,
  type ScheduleKind,
} from '../src/index.js';

/** Compute ops as tokens: F0, B1, B1z, F0&B1, W. */
function tokens(ops: PipelineOp[]): string[] {
  return ops.flatMap((op) => {
    if (op.kind === 'F') return [`F${op.phase}`];
    if (op.kind === 'B') return [`B${op.phase}${op.deferW ? 'z' : ''}`];
    if (op.kind === 'FB') return [`F${op.forwardPhase}&B${op.backwardPhase}`];
    if (op.kind === 'W') return ['W'];
    return [];
  });
}

const rep = (n: number, seq: string[]): string[] => Array.from({ length: Math.max(n, 0) }, () => seq).flat();

/**
 * The step() phase sequence of the reference doc (section 5), for DualPipe (half = P/2, h = min(r, P−1−r),
 * main = C/2−P+h+1) and DualPipeV (half = P, h = r, main = C−2P+r+1).
 */
function expectedPhases(half: number, h: number, main: number, middle: boolean): string[] {
  const out = [
    ...rep(2 * (half - h - 1), ['F0']),
    ...rep(h + 1, ['F0', 'F1']),
    ...rep(half - h - 1, ['B1z', 'W', 'F1']),
  ];
  for (let i = 0; i < main; i++) out.push(...(i === 0 && middle ? ['F0', 'B1'] : ['F0&B1']), 'F1&B0');
  out.push(...rep(half - h - 1, ['B1', 'F1&B0']));
  let zb = false;
  const z = (): string => (zb ? 'z' : '');
  for (let i = 0; i < h + 1; i++) {
    if (i === Math.floor((h + 1) / 2) && h % 2 === 1) zb = true;
    out.push(`B1${z()}`);
    if (i === Math.floor((h + 1) / 2) && h % 2 === 0) zb = true;
    out.push(`B0${z()}`);
  }
  out.push(...rep(half - h - 1, ['W', 'B0z']), ...rep(h + 1, ['W']));
  return out;
}

const shapes = (kind: ScheduleKind): [number, number][] => {
  const out: [number, number][] = [];
  for (const P of [2, 4, 6, 8, 10, 16])
    for (const extra of [0, 2, 6, 11]) {
      if (kind === 'dualpipe' && P % 2) continue;
      const C = 2 * P + (kind === 'dualpipe' ? 2 * Math.ceil(extra / 2) : extra);
      out.push([P, C]);
    }
  return out;
};

describe('buildSchedule', () => {
  it('rejects invalid (ranks, chunks) with a clear reason', () => {
    expect(() => buildSchedule('dualpipe', { ranks: 3, chunks: 12 })).toThrow(/even number of ranks.*got 3/);
    expect(() => buildSchedule('dualpipe', { ranks: 4, chunks: 6 })).toThrow(/chunks ≥ 2·ranks = 8.*got 6/);
    expect(() => buildSchedule('dualpipe', { ranks: 4, chunks: 9 })).toThrow(/even number of chunks/);
    expect(() => buildSchedule('dualpipev', { ranks: 3, chunks: 5 })).toThrow(/chunks ≥ 2·ranks = 6/);
    expect(() => buildSchedule('1f1b', { ranks: 0, chunks: 4 })).toThrow(/ranks must be a positive integer/);
    expect(() => buildSchedule('zb1p', { ranks: 2, chunks: 1.5 })).toThrow(/chunks.*positive integer/);
    expect(() => buildSchedule('pipedream' as ScheduleKind, { ranks: 2, chunks: 4 })).toThrow(
      /unknown pipeline schedule 'pipedream'/,
    );
    expect(scheduleError('dualpipev', { ranks: 3, chunks: 6 })).toBeNull();
  });

  it('DualPipe rank orders follow the phases of step(), phase 0 reaching each rank from its nearer end', () => {
    for (const [P, C] of shapes('dualpipe')) {
      const s = buildSchedule('dualpipe', { ranks: P, chunks: C });
      expect(
        s.stageOwners.every(
          (o, st) => o.length === 2 && o[0] === Math.min(st, P - 1 - st) && o[1] === Math.max(st, P - 1 - st),
        ),
      ).toBe(true);
      for (let r = 0; r < P; r++) {
        const h = Math.min(r, P - 1 - r);
        const middle = r === P / 2 - 1 || r === P / 2;
        expect(tokens(s.ops[r]!), `P=${P} C=${C} rank ${r}`).toEqual(
          expectedPhases(P / 2, h, C / 2 - P + h + 1, middle),
        );
        // Phase 0's stream enters at rank 0 on the first half, at rank P−1 on the second; each stream's
        // micro-batches run in order, stage r on its first-half copy and P−1−r on the other.
        const fwd0 = s.ops[r]!.flatMap((op) =>
          op.kind === 'F' && op.phase === 0 ? [op] : op.kind === 'FB' && op.forwardPhase === 0 ? [op.forward] : [],
        );
        const fromRank0 = r < P / 2;
        expect(fwd0.map((c) => c.microBatch)).toEqual(
          Array.from({ length: C / 2 }, (_, k) => (fromRank0 ? k : C / 2 + k)),
        );
        expect(fwd0.every((c) => c.stage === h)).toBe(true);
      }
    }
  });

  it('DualPipeV rank orders follow the phases of step(), rank r holding stages r and 2P−1−r', () => {
    for (const [P, C] of shapes('dualpipev')) {
      const s = buildSchedule('dualpipev', { ranks: P, chunks: C });
      expect(s.rankStages).toEqual(Array.from({ length: P }, (_, r) => [r, 2 * P - 1 - r]));
      for (let r = 0; r < P; r++) {
        expect(tokens(s.ops[r]!), `P=${P} C=${C} rank ${r}`).toEqual(
          expectedPhases(P, r, C - 2 * P + r + 1, r === P - 1),
        );
        for (const op of s.ops[r]!) if (op.kind === 'F') expect(op.stage).toBe(op.phase === 0 ? r : 2 * P - 1 - r);
      }
      // The V turns on the last rank without communication.
      expect(
        s.ops[P - 1]!.some(
          (op) => (op.kind === 'send' || op.kind === 'recv') && (op.kind === 'send' ? op.to : op.from) === P - 1,
        ),
      ).toBe(false);
    }
  });

  it('every schedule kind is deadlock-free with all dependencies met for many (ranks, chunks)', () => {
    for (const kind of SCHEDULE_KINDS) {
      for (const P of [1, 2, 3, 4, 5, 8]) {
        for (const C of [1, 2, 3, 7, 2 * P, 2 * P + 2, 3 * P + 4]) {
          if (scheduleError(kind, { ranks: P, chunks: C })) continue;
          const sim = simulate(buildSchedule(kind, { ranks: P, chunks: C }), { F: 1, B: 1.3, W: 0.7, p2p: 0.05 });
          expect(sim.makespan).toBeGreaterThan(0);
        }
      }
    }
  });
});

describe('simulate', () => {
  it('reports a deadlock with what each rank waits for', () => {
    const s = buildSchedule('1f1b', { ranks: 2, chunks: 2 });
    // Rank 1 waiting for micro-batch 1 before micro-batch 0 cannot deadlock alone; swap rank 0's sends to make both wait.
    const r0 = s.ops[0]!;
    const firstSend = r0.findIndex((op) => op.kind === 'send');
    const firstRecv = r0.findIndex((op) => op.kind === 'recv');
    const broken = { ...s, ops: [[r0[firstRecv]!, ...r0.filter((_, i) => i !== firstRecv)], s.ops[1]!] };
    expect(firstSend).toBeGreaterThanOrEqual(0);
    expect(() => simulate(broken)).toThrow(/deadlock — rank 0 waits at op #0 .*"recv".*rank 1 waits/);
  });

  it('rejects an op that runs before its input, a wrong destination, and a lost message', () => {
    const s = buildSchedule('gpipe', { ranks: 2, chunks: 1 });
    const noRecv = {
      ...s,
      ops: [s.ops[0]!, s.ops[1]!.filter((op) => !(op.kind === 'recv' && op.payload === 'activation'))],
    };
    expect(() => simulate(noRecv)).toThrow(
      /rank 1 op #0 .*input \(output of stage 0\) was neither received nor computed here/,
    );
    const wrongTo = { ...s, ops: [s.ops[0]!.map((op) => (op.kind === 'send' ? { ...op, to: 0 } : op)), s.ops[1]!] };
    expect(() => simulate(wrongTo)).toThrow(/stage 1 runs on rank 1, not 0/);
    const noW = buildSchedule('zb1p', { ranks: 2, chunks: 2 });
    const dropW = { ...noW, ops: noW.ops.map((ops) => ops.filter((op) => op.kind !== 'W')) };
    expect(() => simulate(dropW)).toThrow(/weight gradients never computed/);
  });

  it("reproduces the bubble table: 1F1B (P−1)(F+B), ZB1P (P−1)(F+B−2W), with the table's B the full backward", () => {
    for (const P of [2, 3, 4, 6, 8]) {
      for (const C of [P, 2 * P, 3 * P + 1]) {
        for (const c of [
          { F: 1, B: 1, W: 1 },
          { F: 2, B: 2, W: 1 },
          { F: 1.5, B: 2, W: 0.5 },
          { F: 3, B: 1, W: 1 },
        ]) {
          const full = c.B + c.W;
          const one = simulate(buildSchedule('1f1b', { ranks: P, chunks: C }), c);
          const zb = simulate(buildSchedule('zb1p', { ranks: P, chunks: C }), c);
          for (const r of one.ranks) expect(r.bubble).toBeCloseTo((P - 1) * (c.F + full), 9);
          for (const r of zb.ranks) expect(r.bubble).toBeCloseTo((P - 1) * (c.F + full - 2 * c.W), 9);
          expect(one.peakActivations).toBe(Math.min(P, C));
          expect(zb.peakActivations).toBe(Math.min(P, C));
          expect(one.parameterCopies).toBe(1);
        }
      }
    }
  });

  it('reproduces DualPipe (P/2−1)(F&B+B−3W) and DualPipeV on P ranks (P−1)(F&B+B−3W), 2x parameters, PP+1 activations', () => {
    // The table's F&B/B/W relation is exact when a forward chunk costs what a backward-for-inputs costs
    // (F = B − W in the table's terms, as in DeepSeek's figure) and the overlapped pair costs at least
    // its longer half and at most the sum; the simulated largest per-rank bubble then equals the formula.
    for (const P of [2, 4, 6, 8, 12]) {
      for (const F of [1, 2]) {
        for (const W of [0, 0.5 * F, F]) {
          for (const overlap of [0, 0.5, 1]) {
            const B = F;
            const FB = Math.max(F, B + W) + overlap * (F + B + W - Math.max(F, B + W));
            const full = B + W;
            const dp = simulate(buildSchedule('dualpipe', { ranks: P, chunks: 2 * P + 4 }), { F, B, W, FB });
            expect(dp.maxBubble).toBeCloseTo((P / 2 - 1) * (FB + full - 3 * W), 9);
            expect(dp.parameterCopies).toBe(2);
            expect(dp.peakActivations).toBe(P + 1);
            const v = simulate(buildSchedule('dualpipev', { ranks: P / 2 || 1, chunks: 2 * P + 2 }), { F, B, W, FB });
            const pv = P / 2 || 1;
            // DualPipeV: PP = 2·pv stages on pv devices → (PP/2 − 1) = pv − 1, PP + 1 activations.
            expect(v.maxBubble).toBeCloseTo((pv - 1) * (FB + full - 3 * W), 9);
            expect(v.peakActivations).toBe(2 * pv + 1);
            expect(v.ranks.every((r) => r.stagesHeld === 2)).toBe(true);
          }
        }
      }
    }
  });

  it('DualPipe ranks hold twice the parameters of 1F1B ranks', () => {
    const dp = buildSchedule('dualpipe', { ranks: 8, chunks: 16 });
    const one = buildSchedule('1f1b', { ranks: 8, chunks: 16 });
    expect(dp.rankStages.map((s) => s.length / dp.stages)).toEqual(
      one.rankStages.map((s) => (2 * s.length) / one.stages),
    );
  });
});

// The CPU kernel of 'mtp.verify' (device-verify.ts): speculative-sampling verification of K drafts per
// sequence. Every step is the WGSL kernel's (verify-kernel-webgpu.ts) in the same f32 arithmetic, built
// from the sampling kernel's row helpers, so both backends return the same (accepted, next) pairs.
//   draft j (token x): accepted with probability min(1, p_j(x) / q_j(x)), tested as u·w_q(x)·z_p < w_p(x)·z_q
//   on the unnormalised weights w and their sums z (u: the draw of counter c + j); at the first rejection
//   the next token is drawn from max(0, w_p·z_q − w_q·z_p) (∝ max(0, p_j − q_j)), after K acceptances
//   from p_K; that last draw uses counter c + K. A greedy draft (draft temperature 0, or no draft rows)
//   has a one-hot q.
import { CpuStorage, type Backend, type KernelTensor } from '@dsv3/core';
import { drawFrom, f, kernelData, RowScratch, rowMax, rowWeights, uniformOf } from './sample-kernel-cpu.js';

export interface VerifyAttrs {
  /** the logits hold each draft's q rows after the K + 1 target rows (else every draft is greedy) */
  draftRows: boolean;
}

/**
 * inputs [logits f32 [B, R, V] (R = K + 1 target rows, then K draft rows when draftRows), drafts i32
 * [B, K], settings f32 [B, 4] (target T, target top-p, draft T, draft top-p), topK i32 [B, 2] (target,
 * draft), keys u32 [B, 2] (seed, first counter)] → i32 [B, 2]: accepted drafts and the next token
 * (-1 when a row it needed has no finite logit).
 */
export function verifyCpu(_b: Backend, inputs: KernelTensor[], { draftRows }: VerifyAttrs): KernelTensor[] {
  const [lt, dt, st, kt, yt] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, R, V] = lt.shape as [number, number, number];
  const K = dt.shape[1]!;
  const logits = kernelData(lt);
  const drafts = kernelData(dt);
  const set = kernelData(st);
  const topK = kernelData(kt);
  const keys = kernelData(yt);
  const out = new Int32Array(2 * B);
  const sp = new RowScratch(V);
  const sq = new RowScratch(V);
  for (let b = 0; b < B; b++) {
    const rowOf =
      (r: number) =>
      (i: number): number =>
        logits[(b * R + r) * V + i]!;
    const [Tt, pt, Td, pd] = [set[4 * b]!, set[4 * b + 1]!, set[4 * b + 2]!, set[4 * b + 3]!];
    const [kt_, kd] = [topK[2 * b]!, topK[2 * b + 1]!];
    const [seed, c] = [keys[2 * b]!, keys[2 * b + 1]!];
    /** p_j's weights into sp.w; null when the row has no finite logit. */
    const target = (j: number): number | null => {
      const m = rowMax(logits, (b * R + j) * V, V);
      return m.at < 0 ? null : rowWeights(rowOf(j), m.best, Tt, kt_, pt, sp);
    };
    const verdict = (): [number, number] => {
      for (let j = 0; j < K; j++) {
        const zp = target(j);
        if (zp === null) return [j, -1];
        const x = drafts[b * K + j]!;
        let greedyQ = !draftRows || !(Td > 0);
        let zq = 1;
        if (!greedyQ) {
          const m = rowMax(logits, (b * R + K + 1 + j) * V, V);
          if (m.at < 0) greedyQ = true;
          else zq = rowWeights(rowOf(K + 1 + j), m.best, Td, kd, pd, sq);
        }
        const wq = (i: number): number => (greedyQ ? (i === x ? 1 : 0) : sq.w[i]!);
        const wpx = sp.w[x]!;
        const wqx = wq(x);
        const u = f(uniformOf(seed, (c + j) >>> 0));
        if (wqx <= 0 ? wpx > 0 : f(f(u * wqx) * zp) < f(wpx * zq)) continue;
        // rejected: the residual max(0, p − q), scaled by z_p · z_q, replaces p's weights
        for (let i = 0; i < V; i++) {
          const r = f(f(sp.w[i]! * zq) - f(wq(i) * zp));
          sp.w[i] = r > 0 ? r : 0;
        }
        let z = sp.mass(0);
        if (!(z > 0)) z = target(j)!; // p = q on the row up to rounding: draw from p
        return [j, drawFrom(sp, z, seed, (c + K) >>> 0)];
      }
      const z = target(K);
      return [K, z === null ? -1 : drawFrom(sp, z, seed, (c + K) >>> 0)];
    };
    [out[2 * b], out[2 * b + 1]] = verdict();
  }
  return [{ storage: new CpuStorage(out), shape: [B, 2], dtype: 'i32' }];
}

// The CPU cache's packed panels (core's latent-panels.ts: its rows a second time as the GEMM's packed
// B~, which the attention's score products read in place): kept equal to the pages through appends,
// batched appends, a fork's copy-on-write and truncation; read by the paged attention, which gives the
// bits of a cache without panels (blocks of 12 rows, not whole panels) and other bits once they are
// zeroed.
import { describe, expect, it } from 'vitest';
import { type CpuStorage, tensor, writePanelRows, type Tensor } from '@dsv3/core';
import { PagedLatentCache, pagedLatentAttention } from '../src/index.js';
import { randArray } from './helpers.js';

const [C, R, H, LAYERS] = [40, 8, 4, 2];
const f32 = (n: number, seed: number) => Float32Array.from(randArray(n, seed, -1, 1));
const host = (t: Tensor) => (t.storage as CpuStorage).data as Float32Array;

const mk = (blockSize: number) =>
  new PagedLatentCache({ numLayers: LAYERS, kvLoraRank: C, ropeDim: R, numBlocks: 12, blockSize });

/** Whether every row `seqs` hold in `layer` sits in the panels as the pages hold it. */
function panelsCurrent(c: PagedLatentCache, layer: number, seqs: number[]): boolean {
  const { ckv, kr, panels } = c.poolTensors(layer);
  const bs = c.blockSize;
  const rows = Int32Array.from(
    new Set(
      seqs.flatMap((q) =>
        Array.from({ length: c.length(q, layer) }, (_, j) => c.blockTable(q)[Math.floor(j / bs)]! * bs + (j % bs)),
      ),
    ),
  );
  return [
    [ckv, panels!.ckv, C],
    [kr, panels!.kr, R],
  ].every(([pool, pan, w]) => {
    const [p, x, width] = [host(pool as Tensor), host(pan as Tensor), w as number];
    const src = new Float32Array(rows.length * width);
    rows.forEach((r, i) => src.set(p.subarray(r * width, (r + 1) * width), i * width));
    const fresh = Float32Array.from(x);
    writePanelRows(fresh, width, src, rows); // changes nothing when the panels are current
    return Buffer.from(fresh.buffer).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength));
  });
}

/** Appends the same rows to both caches' sequences (one ckv / kr draw per call). */
function appendBoth(cs: PagedLatentCache[], seqs: number[][], n: number, seed: number): void {
  const B = seqs[0]!.length;
  for (let l = 0; l < LAYERS; l++) {
    const ckv = f32(B * n * C, seed + l),
      kr = f32(B * n * R, seed + 10 + l);
    cs.forEach((c, i) =>
      B === 1
        ? c.append(l, seqs[i]![0]!, ckv, kr)
        : c.appendBatch(
            l,
            seqs[i]!,
            tensor(ckv, { shape: [B, n, C], dtype: 'f32' }),
            tensor(kr, { shape: [B, n, R], dtype: 'f32' }),
          ),
    );
  }
}

describe('PagedLatentCache packed panels (CPU)', () => {
  it('kept in step with the pages; the attention reads them: the bits of a cache without panels', () => {
    const [withPanels, without] = [mk(16), mk(12)];
    expect(withPanels.panelBytes).toBe(12 * 16 * (C + R) * 4 * LAYERS);
    expect(without.panelBytes).toBe(0);
    expect(without.poolTensors(0).panels).toBeNull();
    const cs = [withPanels, without];
    const a = cs.map((c) => c.allocate());
    appendBoth(cs, [[a[0]!], [a[1]!]], 40, 1); // a prefill of 40 rows
    const b = cs.map((c, i) => c.fork(a[i]!));
    appendBoth(cs, [[a[0]!], [a[1]!]], 1, 2); // a copies the shared last block
    const d = cs.map((c) => c.allocate());
    appendBoth(cs, [[d[0]!], [d[1]!]], 23, 3);
    appendBoth(
      cs,
      [
        [a[0]!, b[0]!, d[0]!],
        [a[1]!, b[1]!, d[1]!],
      ],
      1,
      4,
    ); // a batched decode step
    withPanels.truncate(d[0]!, 20);
    without.truncate(d[1]!, 20);
    appendBoth(cs, [[d[0]!], [d[1]!]], 2, 5);
    for (let l = 0; l < LAYERS; l++)
      expect(panelsCurrent(withPanels, l, [a[0]!, b[0]!, d[0]!]), `layer ${l}`).toBe(true);

    // decode queries of the three sequences (S = 1), then a 5-row chunk of d alone
    for (const [S, pick] of [
      [1, [0, 1, 2]],
      [5, [2]],
    ] as const) {
      const N = pick.length;
      const qL = tensor(f32(N * S * H * C, 7), { shape: [N, S, H, C], dtype: 'f32' }),
        qR = tensor(f32(N * S * H * R, 8), { shape: [N, S, H, R], dtype: 'f32' });
      const outs = cs.map((c, i) => {
        const ids = pick.map((k) => [a, b, d][k]![i]!);
        return Float32Array.from(host(pagedLatentAttention(qL, qR, c, 1, ids, { scale: 0.2 })));
      });
      expect(Buffer.from(outs[0]!.buffer).equals(Buffer.from(outs[1]!.buffer)), `S=${S}: same bits`).toBe(true);
      // zeroed panels: the sequences read in place from them (b and d: one run of rows each) change
      const saved = Float32Array.from(host(withPanels.poolTensors(1).panels!.ckv));
      host(withPanels.poolTensors(1).panels!.ckv).fill(0);
      const ids = pick.map((k) => [a, b, d][k]![0]!);
      const zeroed = host(pagedLatentAttention(qL, qR, withPanels, 1, ids, { scale: 0.2 }));
      const per = S * H * C;
      pick.forEach((k, n) => {
        const same = Buffer.from(zeroed.buffer, zeroed.byteOffset + n * per * 4, per * 4).equals(
          Buffer.from(outs[0]!.buffer, n * per * 4, per * 4),
        );
        expect(
          same,
          `sequence ${'abd'[k]} ${k === 0 ? 'copied (its rows are two runs)' : 'read from the panels'}`,
        ).toBe(k === 0);
      });
      host(withPanels.poolTensors(1).panels!.ckv).set(saved);
    }
    for (const c of cs) c.dispose();
  });
});

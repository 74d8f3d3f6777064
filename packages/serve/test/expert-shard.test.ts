// ExpertShard: a rank keeps exactly the experts its placement gives it; a new placement frees what
// left and reads what arrived from the checkpoint, bit for bit the weights the model was loaded with.
// A rank loaded with startupKeep never reads the others: the same held experts, from the start.
import type { SwiGLU } from '@dsv3/core';
import { loadModel, readConfig } from '@dsv3/model';
import { MoE } from '@dsv3/moe';
import { describe, expect, it } from 'vitest';
import { eplbPlacement, ExpertShard, roundRobinPlacement, startupKeep, startupPlacement } from '../src/index.js';
import { tinyDir, tinyModel } from './helpers.js';

type Model = ReturnType<typeof loadModel>;

/** Expert `e`'s down projection (16 = the shared expert) of decoder layer `layer`. */
function downProj(m: Model, layer: number, e: number): Float32Array {
  const moe = m.model.layers.at(layer).mlp as MoE;
  const mod = (e === 16 ? moe.sharedExperts : moe.experts.at(e)) as SwiGLU;
  return mod.downProj.weight.value.dataSync() as Float32Array;
}

/** Bit for bit (a byte comparison: element-wise matchers are slow on 16K-element arrays). */
function same(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('ExpertShard', () => {
  it('holds only its placement, frees the rest and reads newly placed experts from the checkpoint', () => {
    const model = loadModel(tinyDir);
    const reference = tinyModel();
    const moeLayers = model.model.layers.items.flatMap((l, i) => (l.mlp instanceof MoE ? [i] : []));
    const E = 17; // 16 routed + the shared expert
    const shard = new ExpertShard(model, tinyDir, 1);
    expect(shard.bytes().held).toBe(shard.bytes().all);
    shard.apply(roundRobinPlacement(moeLayers.length, E, 2));
    const weight = (m: Model, layer: number, e: number) => downProj(m, moeLayers[layer]!, e);
    for (let l = 0; l < moeLayers.length; l++)
      for (let e = 0; e < E; e++) {
        expect(shard.holds(l, e)).toBe(e % 2 === 1);
        if (e % 2 === 1) expect(same(weight(model, l, e), weight(reference, l, e))).toBe(true);
        else expect(() => weight(model, l, e)).toThrow(/disposed/);
      }
    const b = shard.bytes();
    expect(b.experts).toBe(8 * moeLayers.length);
    expect(b.held / b.all).toBeCloseTo((8 * 3 * 128 * 128) / (16 * 3 * 128 * 128 + 3 * 128 * 128), 6);

    // skewed loads: EPLB moves experts; rank 1 now holds others, read back from the file
    const load = moeLayers.map((_, l) => Array.from({ length: E }, (_, e) => (e === 16 ? 100 : (e * 7 + l) % 13)));
    const p = eplbPlacement(load, 2, 10);
    shard.apply(p);
    let moved = 0;
    for (let l = 0; l < moeLayers.length; l++)
      for (let e = 0; e < E; e++) {
        const mine = p.replicas[l]![e]!.includes(1);
        expect(shard.holds(l, e)).toBe(mine);
        if (mine) expect(same(weight(model, l, e), weight(reference, l, e))).toBe(true);
        if (mine && e % 2 === 0) moved++;
      }
    expect(moved).toBeGreaterThan(0);
  });

  it('a rank loaded with startupKeep reads only its experts of the first placement, then re-places as one loaded whole', () => {
    const config = readConfig(tinyDir);
    const keep = startupKeep(config, 1, 2);
    let read = 0;
    let skipped = 0;
    const model = loadModel(tinyDir, {
      keep: (name) => {
        const k = keep(name);
        if (/\.mlp\.(experts\.\d+|shared_experts)\./.test(name) && name.startsWith('model.')) k ? read++ : skipped++;
        return k;
      },
    });
    const reference = tinyModel();
    const moeLayers = model.model.layers.items.flatMap((l, i) => (l.mlp instanceof MoE ? [i] : []));
    const E = 17;
    // 3 projections per expert; round-robin over 2 ranks: rank 1 holds the odd experts (8 of 17)
    expect(read).toBe(8 * 3 * moeLayers.length);
    expect(skipped).toBe(9 * 3 * moeLayers.length);
    // the MTP layer's experts and every dense weight are read
    expect(keep('mtp.0.mlp.experts.0.down_proj.weight')).toBe(true);
    expect(keep('model.embed_tokens.weight')).toBe(true);
    expect(() => startupKeep(config, 2, 2)).toThrow(/outside a group of 2 ranks/);

    const shard = new ExpertShard(model, tinyDir, 1, startupPlacement(config, 2));
    const whole = new ExpertShard(loadModel(tinyDir), tinyDir, 1);
    whole.apply(roundRobinPlacement(moeLayers.length, E, 2));
    expect(shard.bytes()).toEqual(whole.bytes());
    const weight = (m: Model, layer: number, e: number) => downProj(m, moeLayers[layer]!, e);
    for (let l = 0; l < moeLayers.length; l++)
      for (let e = 0; e < E; e++) {
        expect(shard.holds(l, e)).toBe(e % 2 === 1);
        if (e % 2 === 1) expect(same(weight(model, l, e), weight(reference, l, e))).toBe(true);
        else expect(() => weight(model, l, e)).toThrow(/disposed/);
      }
    // a re-placement reads the experts it never had, in the dtype the others were loaded in
    const load = moeLayers.map((_, l) => Array.from({ length: E }, (_, e) => (e === 16 ? 100 : (e * 5 + l) % 11)));
    const p = eplbPlacement(load, 2, 10);
    shard.apply(p);
    for (let l = 0; l < moeLayers.length; l++)
      for (let e = 0; e < E; e++)
        if (p.replicas[l]![e]!.includes(1)) {
          expect(shard.holds(l, e)).toBe(true);
          expect(same(weight(model, l, e), weight(reference, l, e))).toBe(true);
        }
  });
});

// bf16 rounding bit-exact against torch's x.to(bfloat16) (fixtures/fp8-goldens.safetensors), and the
// Tensor-level safetensors round trip.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';

const fixtures = join(import.meta.dirname, 'fixtures');

describe('bf16 codec vs torch', () => {
  it('encodes every probe bit-exactly (round to nearest even, tiny and huge values)', () => {
    const f = T.readSafetensors(join(fixtures, 'fp8-goldens.safetensors'));
    const x = f.get('bf16.encode.x').data as Float32Array;
    const want = T.rawToI32(f.getRaw('bf16.encode.y'));
    f.close();
    expect(x.length).toBeGreaterThan(100);
    const got = T.encodeBf16(x);
    let mismatches = 0;
    for (let i = 0; i < x.length; i++) if (got[i] !== (want[i]! & 0xffff)) mismatches++;
    expect(mismatches).toBe(0);
    // and through the cast kernel
    const viaCast = T.cast(T.tensor(x), 'bf16').rawSync() as Uint16Array;
    expectSameBits(viaCast, got, 'viaCast');
    // decoding is exact: bf16 → f32 → bf16 is the identity
    expectSameBits(T.encodeBf16(T.decodeBf16(got)), got, 'bf16 round trip');
  });
});

describe('Tensor safetensors I/O', () => {
  it('loads the tiny-v3 checkpoint as tensors and round-trips through an atomic save', async () => {
    const w = T.loadCheckpoint(join(fixtures, 'tiny-v3'), {
      names: ['model.embed_tokens.weight', 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight'],
    });
    const emb = w['model.embed_tokens.weight']!;
    expect(emb.dtype).toBe('bf16');
    expect(emb.shape).toEqual([1024, 128]);
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-st-'));
    try {
      await T.saveSafetensors(join(dir, 'out.safetensors'), w, { format: 'pt' });
      const back = T.loadSafetensors(join(dir, 'out.safetensors'));
      expectSameBits(back['model.embed_tokens.weight']!.rawSync(), emb.rawSync(), 'embed_tokens raw');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(() => T.loadCheckpoint(join(fixtures, 'tiny-v3'), { names: ['nope'] })).toThrow(/nope/);
  });
});

// CPU weight storage: projections resident in the GEMM engine's memory, f32 or bf16 (weight-only). The
// tiny-v3 checkpoint stores BF16, so bf16 storage holds exactly the weights HF ran in float32: logits stay
// within f32 accumulation tolerance of HF's and greedy generation equals HF's. Also: logits only at the
// last position, the bench helper, and the FP8 checkpoint dequantized into bf16 storage. These compare
// the storage's decoding exactly, so they load with prefillActivations 'f32' (bf16 / FP8 weights default
// to the i16 prefill route, tested against HF in prefill-activations.test.ts).
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import {
  type CpuStorage,
  decodeBf16,
  gemmInfo,
  isResident,
  type Linear,
  narrow,
  noGrad,
  noGradAsync,
  readSafetensors,
  rowsOnLookupOf,
  reshape,
  tensor,
} from '@dsv3/core';
import { dequantizeWeight, quantizeWeight } from '@dsv3/fp8';
import { benchGeneration, generate, keepsResidentWeights, loadModel, saveModel } from '../src/index.js';
import { compare } from './helpers.js';

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
const g = (name: string): Float32Array => goldens.get(name).data as Float32Array;
const rows = (name: string, width: number): number[][] => {
  const d = Array.from(goldens.get(name).data as Int32Array);
  return Array.from({ length: d.length / width }, (_, r) => d.slice(r * width, (r + 1) * width));
};

describe('bf16 weight storage on tiny-v3 (a BF16 checkpoint: the same weights HF ran)', () => {
  const before = gemmInfo().residentBytes;
  const model = loadModel(join(coreFixtures, 'tiny-v3'), { weights: 'bf16', prefillActivations: 'f32' });

  it('keeps projections resident as bf16 (o_proj too; the router, kv_b_proj and norms f32)', () => {
    const layer = model.model.layers.at(1);
    const named = new Map(layer.namedParameters());
    expect(named.get('mlp.experts.0.gate_proj.weight')!.value.dtype).toBe('bf16');
    expect(named.get('self_attn.q_a_proj.weight')!.value.dtype).toBe('bf16');
    expect(named.get('self_attn.o_proj.weight')!.value.dtype).toBe('bf16');
    expect(named.get('self_attn.kv_a_proj_with_mqa.weight')!.value.dtype).toBe('bf16');
    expect(named.get('mlp.gate.weight')!.value.dtype).toBe('f32');
    expect(named.get('self_attn.kv_b_proj.weight')!.value.dtype).toBe('f32');
    expect(model.lmHead.weight.value.dtype).toBe('bf16');
    expect(gemmInfo().residentBytes).toBeGreaterThan(before);
  });

  it('keeps the embedding resident as bf16 (the checkpoint stores it so); its rows come out f32', () => {
    const table = model.model.embedTokens.weight.value;
    expect(table.dtype).toBe('bf16');
    expect(isResident((table.storage as CpuStorage).data)).toBe(true);
    const rows = noGrad(() => model.model.embedTokens.forward(tensor([3, 0, 3], { dtype: 'i32' })));
    expect(rows.dtype).toBe('f32');
    const h = model.config.hiddenSize;
    const bits = (table.storage as CpuStorage).data as Uint16Array;
    const got = rows.dataSync() as Float32Array;
    for (const [r, id] of [3, 0, 3].entries())
      expectSameBits(got.subarray(r * h, (r + 1) * h), decodeBf16(bits.subarray(id * h, (id + 1) * h)), `row ${r}`);
  });

  it('an f32-stored embedding stays f32 under bf16 weights (its values exactly): the same logits bits', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-f32-ckpt-'));
    try {
      await saveModel(loadModel(join(coreFixtures, 'tiny-v3')), dir, { dtype: 'f32' });
      const fromF32 = loadModel(dir, { weights: 'bf16', prefillActivations: 'f32' });
      const table = fromF32.model.embedTokens.weight.value;
      expect(table.dtype).toBe('f32');
      expect(isResident((table.storage as CpuStorage).data)).toBe(true);
      const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
      expectSameBits(
        noGrad(() => fromF32.forward(ids)).logits.dataSync() as Float32Array,
        noGrad(() => model.forward(ids)).logits.dataSync() as Float32Array,
        'logits',
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("lays out every layer's absorbed MLA weights at load (the first decode step does not)", () => {
    for (const layer of model.model.layers) {
      const attn = layer.selfAttn as unknown as { absorbedCpu: { source: unknown } | null; kvBProj: Linear };
      expect(attn.absorbedCpu?.source).toBe(attn.kvBProj.weight.value);
    }
  });

  it('logits match HF float32 (rel <= 1e-5)', () => {
    const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
    const out = noGrad(() => model.forward(ids));
    const c = compare(out.logits.dataSync(), g('hf.logits'));
    console.log(`bf16 weights vs hf.logits: rel ${c.rel.toExponential(2)}, max abs ${c.maxAbs.toExponential(2)}`);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  });

  it("mapWeights maps the checkpoint's pages (Linux, the addon built) and gives the logits of a load that reads them", () => {
    const file = join(coreFixtures, 'tiny-v3', 'model.safetensors');
    /** The process's mappings of the checkpoint file. */
    const mappingsOfFile = (): number =>
      process.platform === 'linux'
        ? readFileSync('/proc/self/maps', 'utf8')
            .split('\n')
            .filter((l) => l.endsWith(file)).length
        : 0;
    expect(mappingsOfFile()).toBe(0); // \`model\` read its weights
    const mapped = loadModel(join(coreFixtures, 'tiny-v3'), {
      weights: 'bf16',
      prefillActivations: 'f32',
      mapWeights: true,
    });
    if (process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && process.platform === 'linux') {
      // the file's runs of weights, not one mapping a weight (there are dozens)
      const resident = [...mapped.namedParameters()].filter(([, p]) => p.value.dtype === 'bf16').length;
      expect(resident).toBeGreaterThan(20);
      expect(mappingsOfFile()).toBeGreaterThan(0);
      expect(mappingsOfFile()).toBeLessThanOrEqual(3);
    }
    // the embedding's rows are read from the file as they are looked up (core's readRowsOnLookup), not mapped
    const table = (mapped.model.embedTokens.weight.value.storage as CpuStorage).data;
    const rowsRead = rowsOnLookupOf(table)!;
    expect(rowsRead.unread).toBe(mapped.config.vocabSize);
    expect(rowsOnLookupOf((model.model.embedTokens.weight.value.storage as CpuStorage).data)).toBeUndefined();
    const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
    expectSameBits(
      noGrad(() => mapped.forward(ids)).logits.dataSync() as Float32Array,
      noGrad(() => model.forward(ids)).logits.dataSync() as Float32Array,
      'logits, mapped vs read',
    );
    const distinct = new Set(ids.dataSync()).size;
    expect(rowsRead.unread).toBe(mapped.config.vocabSize - distinct);
    expect(() => loadModel(join(coreFixtures, 'tiny-v3'), { mapWeights: true, fp8: 'w8a8' })).toThrow(
      /mapWeights maps resident CPU weights from the file; this load keeps none \(backend cpu, fp8 'w8a8'\)/,
    );
    // what mapWeights 'auto' (the CLIs' default) maps: CPU loads with resident weights only
    expect(keepsResidentWeights({})).toBe(true);
    expect(keepsResidentWeights({ fp8: 'w8a8' })).toBe(false);
    expect(keepsResidentWeights({ dtype: 'bf16' })).toBe(false);
  });

  it('greedy generation equals HF generate', async () => {
    const out = await generate(model, rows('prompt_ids', 8), { maxNewTokens: 24, temperature: 0, stopTokens: [] });
    expect(out.ids).toEqual(rows('hf.generate', 32));
  });

  it("one sequence's greedy decode screens the bf16 head (its 8-bit copy) and still generates HF's tokens", async () => {
    expect(model.lmHead.screenArgmax).toBe(true); // an inference load's head, unless it asks otherwise
    const unscreened = loadModel(join(coreFixtures, 'tiny-v3'), { weights: 'bf16', screenHead: false });
    expect(unscreened.lmHead.screenArgmax).toBe(false);
    const want = rows('hf.generate', 32);
    const before = gemmInfo();
    for (const [r, prompt] of rows('prompt_ids', 8).entries()) {
      const out = await generate(model, [prompt], { maxNewTokens: 24, temperature: 0, stopTokens: [] });
      expect(out.ids[0]).toEqual(want[r]);
    }
    const after = gemmInfo();
    if (after.nativeKernels) {
      // the screen decided (nearly) every token: 2 prompts x 24 tokens
      expect(after.screenedArgmaxes - before.screenedArgmaxes).toBeGreaterThanOrEqual(40);
      expect(after.screenedHeads).toBeGreaterThanOrEqual(1);
    }
    // and the same tokens with the screen off (the full product and its scan)
    model.lmHead.screenArgmax = false;
    try {
      const out = await generate(model, [rows('prompt_ids', 8)[1]!], {
        maxNewTokens: 24,
        temperature: 0,
        stopTokens: [],
      });
      expect(out.ids[0]).toEqual(want[1]);
      expect(gemmInfo().screenedArgmaxes).toBe(after.screenedArgmaxes);
    } finally {
      model.lmHead.screenArgmax = true;
    }
  });

  it("a step's last-position logits equal the last row of the full logits (to f32 rounding)", async () => {
    await noGradAsync(async () => {
      const prompt = rows('prompt_ids', 8)[0]!;
      const ids = tensor(Int32Array.from(prompt), { shape: [1, 8], dtype: 'i32' });
      const c1 = model.newCache(32),
        c2 = model.newCache(32);
      const all = model.step(c1, [c1.allocateSequence()], ids);
      const last = model.step(c2, [c2.allocateSequence()], ids, { logits: 'last' });
      expect(last.logits.shape).toEqual([1, 1, 1024]);
      expect(last.hidden.shape).toEqual([1, 8, 128]);
      // One row takes the GEMV, eight the GEMM: same products, different summation order.
      const c = compare(last.logits.dataSync(), reshape(narrow(all.logits, 1, 7, 1), [1, 1, 1024]).dataSync());
      expect(c.rel).toBeLessThanOrEqual(1e-6);
    });
  });

  it('benchGeneration reports rates and greedy tokens equal to generate (batch 1 and 3)', async () => {
    const r = await benchGeneration(model, { prefill: 8, decode: 4 });
    expect(r.prefillTokS).toBeGreaterThan(0);
    expect(r.decodeTokS).toBeGreaterThan(0);
    const prompt = Array.from({ length: 8 }, (_, i) => (i * 7919 + 13) % 1024);
    const gen = await generate(model, [prompt], { maxNewTokens: 5, temperature: 0, stopTokens: [] });
    expect(r.tokens).toEqual(gen.newTokens[0]);
    const b = await benchGeneration(model, { prefill: 8, decode: 2, batch: 3 });
    expect(b.batch).toBe(3);
    await expect(benchGeneration(model, { prefill: 0, decode: 2 })).rejects.toThrow(/prefill >= 1/);
  });
});

describe('FP8 checkpoint into bf16 weight storage', () => {
  it('matches the HF dequantized-FP8 logits (the dequantized weights rounded to bf16)', () => {
    const model = loadModel(join(coreFixtures, 'tiny-v3-fp8'), { weights: 'bf16', prefillActivations: 'f32' });
    const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
    const out = noGrad(() => model.forward(ids));
    const c = compare(out.logits.dataSync(), g('hf.fp8_dequant.logits'));
    console.log(`fp8 -> bf16 weights vs hf.fp8_dequant.logits: rel ${c.rel.toExponential(2)}`);
    // q*scale rounded to bf16 (8-bit mantissa) moves each weight by <= 2^-9 relative; this random
    // network amplifies weight perturbations (see the fixtures README), so the bound is loose.
    expect(c.rel).toBeLessThanOrEqual(5e-2);
  });
});

describe('FP8 weight storage (E4M3 bytes + 128x128 scales, decoded in the kernels)', () => {
  const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });

  it('tiny-v3-fp8 keeps its FP8 bytes and matches HF on the dequantized weights (rel <= 1e-5)', () => {
    const model = loadModel(join(coreFixtures, 'tiny-v3-fp8'), { weights: 'fp8', prefillActivations: 'f32' });
    const named = new Map(model.model.layers.at(1).namedParameters());
    expect(named.get('mlp.experts.3.down_proj.weight')!.value.dtype).toBe('fp8-e4m3');
    expect(named.get('self_attn.q_b_proj.weight')!.value.dtype).toBe('fp8-e4m3');
    // o_proj and kv_a_proj_with_mqa keep the checkpoint's FP8 (from a BF16 checkpoint they are bf16)
    expect(named.get('self_attn.o_proj.weight')!.value.dtype).toBe('fp8-e4m3');
    expect(named.get('self_attn.kv_a_proj_with_mqa.weight')!.value.dtype).toBe('fp8-e4m3');
    expect(model.lmHead.weight.value.dtype).toBe('bf16');
    const out = noGrad(() => model.forward(ids));
    const c = compare(out.logits.dataSync(), g('hf.fp8_dequant.logits'));
    console.log(
      `fp8 weights vs hf.fp8_dequant.logits: rel ${c.rel.toExponential(2)}, max abs ${c.maxAbs.toExponential(2)}`,
    );
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  });

  it('tiny-v3-fp8 with mapWeights (its FP8 bytes mapped from the file): the logits of a load that reads them', () => {
    const dir = join(coreFixtures, 'tiny-v3-fp8');
    const [mapped, read] = [true, false].map((mapWeights) =>
      loadModel(dir, { weights: 'fp8', prefillActivations: 'f32', mapWeights }),
    );
    expectSameBits(
      noGrad(() => mapped!.forward(ids)).logits.dataSync() as Float32Array,
      noGrad(() => read!.forward(ids)).logits.dataSync() as Float32Array,
      'logits, mapped vs read',
    );
  });

  it('an FP8 checkpoint with an E4M3 NaN code is refused at load, naming the tensor and element', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-fp8-nan-'));
    try {
      const src = join(coreFixtures, 'tiny-v3-fp8');
      copyFileSync(join(src, 'config.json'), join(dir, 'config.json'));
      const bytes = readFileSync(join(src, 'model.safetensors'));
      const headerLen = Number(bytes.readBigUInt64LE(0));
      const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8')) as Record<
        string,
        { data_offsets: [number, number] }
      >;
      const name = 'model.layers.1.mlp.experts.3.down_proj.weight';
      bytes[8 + headerLen + header[name]!.data_offsets[0] + 5] = 0xff;
      writeFileSync(join(dir, 'model.safetensors'), bytes);
      expect(() => loadModel(dir, { weights: 'fp8' })).toThrow(
        /experts\.3\.down_proj\.weight: element 5 \(row 0, column 5\) is an E4M3 NaN code \(0xff\)/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('headDtype fp8: the head is the checkpoint head quantized (128x128); logits match float64 over it', () => {
    const dir = join(coreFixtures, 'tiny-v3');
    const model = loadModel(dir, { weights: 'fp8', headDtype: 'fp8', prefillActivations: 'f32' });
    const head = model.lmHead;
    expect(head.weight.value.dtype).toBe('fp8-e4m3');
    const [V, h] = head.weight.value.shape as [number, number];
    const exact = loadModel(dir).lmHead.weight.value.dataSync() as Float32Array; // the BF16 head, in f32
    const want = quantizeWeight(exact, [V, h], { block: 128 });
    const bytes = (head.fp8!.w.storage as CpuStorage).data as Uint8Array;
    expectSameBits(bytes.subarray(0, V * h), want.q, 'bytes');
    expect(Array.from(head.fp8!.scales)).toEqual(Array.from(want.scales));
    // float64: every E4M3 value (exact in f32, read with unit scales) times its block's scale.
    const codes = dequantizeWeight(want.q, new Float32Array(want.scales.length).fill(1), [V, h]);
    const cb = Math.ceil(h / 128);
    const out = noGrad(() => model.forward(ids));
    const normed = noGrad(() => model.model.norm.forward(out.hidden)).dataSync() as Float32Array;
    const rowsN = normed.length / h;
    const ref = new Float64Array(rowsN * V);
    for (let r = 0; r < rowsN; r++)
      for (let v = 0; v < V; v++) {
        let s = 0;
        for (let p = 0; p < h; p++)
          s += normed[r * h + p]! * codes[v * h + p]! * want.scales[Math.floor(v / 128) * cb + Math.floor(p / 128)]!;
        ref[r * V + v] = s;
      }
    const c = compare(out.logits.dataSync(), ref);
    expect(c.rel).toBeLessThanOrEqual(1e-6);
    // The bf16 head's logits differ by the head's quantization error (so the head did change).
    const bf16Head = loadModel(dir, { weights: 'fp8', prefillActivations: 'f32' });
    expect(bf16Head.lmHead.weight.value.dtype).toBe('bf16');
    expect(compare(noGrad(() => bf16Head.forward(ids)).logits.dataSync(), ref).rel).toBeGreaterThan(1e-4);
  });

  it("headDtype other than bf16 is refused unless weights are 'fp8' on the CPU, and must be bf16 or fp8", () => {
    const dir = join(coreFixtures, 'tiny-v3');
    expect(() => loadModel(dir, { weights: 'bf16', headDtype: 'fp8' })).toThrow(
      /headDtype 'fp8' needs CPU weights 'fp8'/,
    );
    expect(() => loadModel(dir, { weights: 'fp8', headDtype: 'f32' as 'fp8' })).toThrow(/headDtype must be/);
  });

  it('a BF16 checkpoint is quantized at load; decode steps run the FP8 GEMV', async () => {
    const model = loadModel(join(coreFixtures, 'tiny-v3'), { weights: 'fp8', prefillActivations: 'f32' });
    const named = new Map(model.model.layers.at(1).namedParameters());
    expect(named.get('self_attn.q_b_proj.weight')!.value.dtype).toBe('fp8-e4m3');
    expect(named.get('self_attn.o_proj.weight')!.value.dtype).toBe('bf16');
    expect(named.get('self_attn.kv_a_proj_with_mqa.weight')!.value.dtype).toBe('bf16');
    // quantized 128 rows at a time: q_b_proj's 192 rows end in a short slab; the bytes and scales are
    // the whole tensor's quantization
    const exact = new Map(loadModel(join(coreFixtures, 'tiny-v3')).model.layers.at(1).namedParameters());
    const qb = exact.get('self_attn.q_b_proj.weight')!.value;
    expect(qb.shape).toEqual([192, 128]);
    const want = quantizeWeight(qb.dataSync() as Float32Array, [192, 128], { block: 128 });
    const layer = model.model.layers.at(1) as unknown as { selfAttn: { qBProj: Linear } };
    const got = layer.selfAttn.qBProj.fp8!;
    expectSameBits(((got.w.storage as CpuStorage).data as Uint8Array).subarray(0, 192 * 128), want.q, 'q_b_proj bytes');
    expect(Array.from(got.scales)).toEqual(Array.from(want.scales));
    const r = await benchGeneration(model, { prefill: 8, decode: 3 });
    expect(r.tokens).toHaveLength(4);
    const out = noGrad(() => model.forward(ids));
    // Weight quantization error amplified by this random network (~27%, fixtures README).
    const c = compare(out.logits.dataSync(), g('hf.logits'));
    expect(c.rel).toBeGreaterThan(1e-3);
    expect(c.rel).toBeLessThan(0.6);
  });
});

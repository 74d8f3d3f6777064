import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeBf16, f32ToBf16Bits } from '../src/dtype';
import type { SafetensorsWritable } from '../src/io';
import { readSafetensors, serializeSafetensors } from '../src/io';
import { FIX } from './safetensors-helpers';

// ---- the project's reference fixtures ----

interface V3Config {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  moe_intermediate_size: number;
  num_hidden_layers: number;
  first_k_dense_replace: number;
  num_attention_heads: number;
  n_shared_experts: number;
  n_routed_experts: number;
  q_lora_rank: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  num_nextn_predict_layers: number;
}

/** Every tensor of a DeepSeek-V3 checkpoint (Hugging Face names) with its shape, derived from config.json. */
function expectedV3Tensors(c: V3Config): Map<string, number[]> {
  const H = c.hidden_size;
  const nh = c.num_attention_heads;
  const m = new Map<string, number[]>([
    ['model.embed_tokens.weight', [c.vocab_size, H]],
    ['model.norm.weight', [H]],
    ['lm_head.weight', [c.vocab_size, H]],
  ]);
  const mlp = (p: string, inter: number) => {
    m.set(`${p}.gate_proj.weight`, [inter, H]);
    m.set(`${p}.up_proj.weight`, [inter, H]);
    m.set(`${p}.down_proj.weight`, [H, inter]);
  };
  for (let l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, [H]);
    m.set(`${p}.post_attention_layernorm.weight`, [H]);
    m.set(`${p}.self_attn.q_a_proj.weight`, [c.q_lora_rank, H]);
    m.set(`${p}.self_attn.q_a_layernorm.weight`, [c.q_lora_rank]);
    m.set(`${p}.self_attn.q_b_proj.weight`, [nh * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank]);
    m.set(`${p}.self_attn.kv_a_proj_with_mqa.weight`, [c.kv_lora_rank + c.qk_rope_head_dim, H]);
    m.set(`${p}.self_attn.kv_a_layernorm.weight`, [c.kv_lora_rank]);
    m.set(`${p}.self_attn.kv_b_proj.weight`, [nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank]);
    m.set(`${p}.self_attn.o_proj.weight`, [H, nh * c.v_head_dim]);
    if (l < c.first_k_dense_replace) {
      mlp(`${p}.mlp`, c.intermediate_size);
    } else {
      m.set(`${p}.mlp.gate.weight`, [c.n_routed_experts, H]);
      m.set(`${p}.mlp.gate.e_score_correction_bias`, [c.n_routed_experts]);
      for (let e = 0; e < c.n_routed_experts; e++) mlp(`${p}.mlp.experts.${e}`, c.moe_intermediate_size);
      mlp(`${p}.mlp.shared_experts`, c.moe_intermediate_size * c.n_shared_experts);
    }
    if (l >= c.num_hidden_layers) {
      m.set(`${p}.enorm.weight`, [H]);
      m.set(`${p}.hnorm.weight`, [H]);
      m.set(`${p}.eh_proj.weight`, [H, 2 * H]);
      m.set(`${p}.embed_tokens.weight`, [c.vocab_size, H]);
      m.set(`${p}.shared_head.norm.weight`, [H]);
      m.set(`${p}.shared_head.head.weight`, [c.vocab_size, H]);
    }
  }
  return m;
}

const isQuantized = (name: string) =>
  /\.(self_attn\.(q_a|q_b|kv_a|kv_b|o)_proj|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj|kv_a_proj_with_mqa)\.weight$/.test(
    name,
  );

describe('fixtures', () => {
  const config = JSON.parse(fs.readFileSync(path.join(FIX, 'tiny-v3/config.json'), 'utf8')) as V3Config;
  const expectedTensors = expectedV3Tensors(config);

  it('tiny-v3: BF16 tensors under the Hugging Face names, shapes as config.json implies', () => {
    const f = readSafetensors(path.join(FIX, 'tiny-v3/model.safetensors'));
    expect(f.metadata).toEqual({ format: 'pt' });
    expect(f.names()).toEqual([...expectedTensors.keys()].sort());
    expect(f.names()).toHaveLength(269);
    for (const [name, shape] of expectedTensors) {
      expect(f.info(name), name).toMatchObject({ dtype: 'bf16', stDtype: 'BF16', shape });
    }
    const q = f.get('model.layers.0.self_attn.q_a_proj.weight');
    expect(q).toMatchObject({ dtype: 'bf16', shape: [config.q_lora_rank, config.hidden_size] });
    expect(q.data).toBeInstanceOf(Uint16Array);
    const v = decodeBf16(q.data as Uint16Array);
    expect(v.every(Number.isFinite)).toBe(true);
    expect(v.some((x) => x !== 0)).toBe(true);
    f.close();
  });

  it('tiny-v3-fp8: F8_E4M3 weights with F32 128x128 block scales that dequantize to the BF16 weights', () => {
    const f = readSafetensors(path.join(FIX, 'tiny-v3-fp8/model.safetensors'));
    const bf = readSafetensors(path.join(FIX, 'tiny-v3/model.safetensors'));
    const goldens = readSafetensors(path.join(FIX, 'fp8-goldens.safetensors'));
    const e4m3 = goldens.get('fp8.e4m3.decode').data as Float32Array; // value of every byte, from torch
    const names = new Set(f.names());
    let quantized = 0;
    for (const [name, shape] of expectedTensors) {
      const scaleName = `${name}_scale_inv`;
      if (!isQuantized(name)) {
        expect(f.info(name), name).toMatchObject({ dtype: 'bf16', shape });
        expect(names.has(scaleName)).toBe(false);
        continue;
      }
      quantized++;
      const [out, inp] = shape as [number, number];
      expect(f.info(name), name).toMatchObject({ dtype: 'fp8-e4m3', stDtype: 'F8_E4M3', shape });
      expect(f.info(scaleName), scaleName).toMatchObject({
        dtype: 'f32',
        shape: [Math.ceil(out / 128), Math.ceil(inp / 128)],
      });
      // dequantized = fp8 value x scale of its 128x128 block ≈ the BF16 weight
      const w = f.get(name).data as Uint8Array;
      const s = f.get(scaleName).data as Float32Array;
      const ref = decodeBf16(bf.get(name).data as Uint16Array);
      const sb = Math.ceil(inp / 128);
      let err = 0;
      let norm = 0;
      for (let i = 0; i < out; i++) {
        for (let j = 0; j < inp; j++) {
          const d = e4m3[w[i * inp + j]!]! * s[Math.floor(i / 128) * sb + Math.floor(j / 128)]!;
          err += (d - ref[i * inp + j]!) ** 2;
          norm += ref[i * inp + j]! ** 2;
        }
      }
      expect(Math.sqrt(err / norm), name).toBeLessThan(0.05);
    }
    expect(quantized).toBe(232);
    expect(names.size).toBe(expectedTensors.size + quantized);
    for (const g of [f, bf, goldens]) g.close();
  });

  it('fp8-goldens: F32, U8 and I16 tensors; bf16.encode.y (I16) usable through getI32', () => {
    const f = readSafetensors(path.join(FIX, 'fp8-goldens.safetensors'));
    const counts: Record<string, number> = {};
    for (const n of f.names()) counts[f.info(n).stDtype] = (counts[f.info(n).stDtype] ?? 0) + 1;
    expect(counts).toEqual({ F32: 20, U8: 8, I16: 1 });
    expect(f.info('bf16.encode.y')).toMatchObject({ dtype: 'I16', stDtype: 'I16', shape: [10240] });
    expect(f.info('fp8.e4m3.decode')).toMatchObject({ dtype: 'f32', shape: [256] });
    expect(f.info('k.act_quant.y')).toMatchObject({ dtype: 'u8', shape: [64, 512] });
    const x = f.get('bf16.encode.x').data as Float32Array;
    const y = f.getI32('bf16.encode.y').data;
    expect(y.length).toBe(x.length);
    let mismatches = 0;
    for (let i = 0; i < x.length; i++) if ((y[i]! & 0xffff) !== f32ToBf16Bits(x[i]!)) mismatches++;
    expect(mismatches).toBe(0);
    f.close();
  });

  it('re-serializing each fixture reproduces its layout (and the model files byte for byte)', () => {
    for (const rel of ['tiny-v3/model.safetensors', 'tiny-v3-fp8/model.safetensors', 'fp8-goldens.safetensors']) {
      const p = path.join(FIX, rel);
      const f = readSafetensors(p);
      const tensors: Record<string, SafetensorsWritable> = {};
      for (const n of f.names()) tensors[n] = f.getRaw(n);
      const ours = readSafetensors(serializeSafetensors(tensors, { ...f.metadata }));
      for (const n of f.names()) expect(ours.info(n).dataOffsets, `${rel}: ${n}`).toEqual(f.info(n).dataOffsets);
      const file = fs.readFileSync(p);
      const oursBytes = Buffer.from(serializeSafetensors(tensors, { ...f.metadata }));
      expect(Buffer.compare(oursBytes.subarray(ours.dataStart), file.subarray(f.dataStart)), rel).toBe(0);
      // the model files come from the Python library's writer; fp8-goldens' header was written by other code
      // (spaced JSON, __metadata__ last), so only its data section is expected to match
      if (rel.includes('model')) expect(Buffer.compare(oursBytes, file), rel).toBe(0);
      f.close();
    }
  });
});

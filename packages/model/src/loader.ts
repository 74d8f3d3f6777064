// Loading and saving Hugging Face DeepSeek-V3 checkpoints (single file or sharded) under the
// published names: everything is validated first (one error listing every problem), then loaded.
import { warmUp } from './warm-up.js';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  cast,
  cpu,
  fp8NaNIndex,
  encodeBf16,
  isWebGpu,
  noGrad,
  requireShaderF16,
  fromRaw,
  Linear,
  mapResidentTensors,
  readRowsOnLookup,
  readResidentTensor,
  readShardedCheckpoint,
  readTensorInto,
  readTensorRowsInto,
  setPrefillActivations,
  Tensor,
  writeFileAtomic,
  writeShardedCheckpoint,
  type Backend,
  type CpuStorage,
  type DType,
  type Fp8LinearWeight,
  type Parameter,
  type ReadIntoOptions,
  type ShardedCheckpoint,
} from '@dsv3/core';
import { dequantizeWeight, FP8Linear, quantizeWeight, type QuantizedTensor } from '@dsv3/fp8';
import { MLA } from '@dsv3/mla';
import { MoE } from '@dsv3/moe';
import { mtpToCheckpointName } from '@dsv3/mtp';
import { parseConfig, toHfConfig, type ModelConfig } from './config.js';
import { DeepseekV3ForCausalLM, type ModelOptions } from './model.js';
import { CheckpointMismatchError, validateCheckpoint, type CheckpointEntry } from './weights.js';

/** Module state-dict name → checkpoint name (MTP module k lives at model.layers.{L + k}). */
export function checkpointName(config: ModelConfig, name: string): string {
  return name.startsWith('mtp.')
    ? mtpToCheckpointName(name, { numHiddenLayers: config.numHiddenLayers, localPrefix: 'mtp.' })
    : name;
}

export interface LoadOptions extends Omit<ModelOptions, 'seed' | 'std' | 'rng'> {
  /**
   * Only the state-dict names it accepts are read; the others stay zero placeholders that cost no
   * memory (CPU), for a caller that frees or never uses them (a parallel rank's unheld shards).
   */
  keep?: (name: string) => boolean;
  /**
   * FP8 checkpoints: 'dequantize' (default) widens each weight on load (q · scale); 'w8a8' keeps the
   * projections in FP8 and runs them as block-scaled GEMMs on activations quantized online (1x128),
   * as DeepSeek's inference code does; routed experts run as one grouped FP8 GEMM per projection over
   * device-side segments (MoE.useFp8Experts). Parameters still hold the dequantized weights (the
   * absorbed MLA folds kv_b_proj from them, as DeepSeek's code does).
   */
  fp8?: 'dequantize' | 'w8a8';
  /**
   * CPU: storage of the projection weights (attention, MLP, experts, LM head), placed once, resident,
   * in the GEMM engine's memory and streamed from the file into place. 'f32' (default) or 'bf16'
   * (weight-only: activations stay f32, the kernels decode bf16 in registers; FP8 checkpoints are
   * dequantized to it), or 'fp8': E4M3 bytes with 128x128 block scales decoded in the kernels (FP8
   * checkpoints keep their bytes, others are quantized at load; the head stays bf16; inference only).
   * The token embedding is resident as well: bf16 with weights 'bf16' / 'fp8' where the checkpoint
   * stores it bf16 (its rows widen to f32 as they are looked up), else f32.
   * Other backends (WebGPU): 'bf16' keeps the same projections bf16 on the device (routed experts
   * included), decoded in the GEMMs' tile loads with f32 accumulation (inference only); 'f16' is the f16
   * compute mode: the same projections (routed experts included) converted to f16 at load (half the
   * bytes a decode step reads), read as f16 by the GEMMs (tensor-core f16 GEMMs where the adapter has
   * them) with f32 accumulation, activations f32 between ops; it needs the adapter's 'shader-f16'
   * feature (a clear error otherwise; inference only). FP8
   * checkpoints there use `fp8: 'w8a8'`.
   */
  weights?: 'f32' | 'bf16' | 'f16' | 'fp8';
  /**
   * CPU with weights 'fp8': the LM head's storage, 'bf16' (default, as in DeepSeek-V3's checkpoints) or
   * 'fp8' (quantized at load to E4M3 with 128x128 block scales: the head is most of the bytes a decode
   * step reads, so this nearly halves them; logits carry the head's quantization error).
   */
  headDtype?: 'bf16' | 'fp8';
  /**
   * CPU, resident weights: whether greedy decoding (`model.greedyStep`) may screen a bf16 LM head by an
   * 8-bit copy packed at its first greedy step (core's `Linear.screenArgmax`: the same tokens, half the
   * head's bytes a step; the copy takes ~1/2 of the head's memory, 135 MB on V3-mini). Default true; a
   * process that only samples from logits (a server) passes false.
   */
  screenHead?: boolean;
  /**
   * CPU: resident weights the checkpoint stores in their storage dtype (bf16 from a BF16 checkpoint, f32
   * from an F32 one, FP8 bytes from an FP8 one) map their pages from the file, as llama.cpp maps a GGUF,
   * instead of being read into the engine's memory: loads several times faster (no fresh memory to fill)
   * and processes loading the same file share its pages. Their pages are brought in at load; the
   * embedding is not mapped but read a row at a time as lookups need them (core's readRowsOnLookup: it
   * takes memory for the rows of the tokens a process sees). Runs of neighbouring tensors map at once (a few
   * mappings a file) where the file puts them within 2 MiB pages, so where the page cache holds the file
   * in huge folios (a cold read through the mapping leaves it so) decode reads them as read weights'
   * huge pages; a file cached in small folios (read() by another program) maps in 4 KiB pages, decode
   * ~10-15% slower here (docs/benchmarks-sessions.md, twenty-fifth and twenty-sixth sessions). 'auto' maps
   * where the load keeps resident weights (the CPU, weights not `fp8: 'w8a8'`) and reads elsewhere: the
   * CLIs' default; true refuses a load that keeps none. The files must not be truncated or rewritten in
   * place while the model is in use (checkpoints replaced by a rename, as this project writes them, are
   * safe). Linux with the native addon; elsewhere the weights are read. Default false (a model loaded to
   * train writes its weights: mapped ones would be copied page by page).
   */
  mapWeights?: boolean | 'auto';
  /**
   * CPU: a prefill of this many tokens and up to WARMUP_DECODE_STEPS decode steps through a throwaway cache once loaded
   * (warm-up.ts), so the first request runs at steady speed; 0 or absent: none.
   */
  warmupTokens?: number;
  /**
   * CPU: the activations of the bf16 / FP8 weight products of many rows (prefill): 'i16', quantized per
   * row and 128 depths with the weights as i16 per column and 128 depths and summed with integer dot
   * products (core's i16-gemm-kernel.ts states the error bounds; about 1.3x less CPU a prefill), or 'f32'.
   * Absent: 'i16' with weights 'bf16' / 'fp8' on the CPU — its logits sit closer to the f32-activation
   * ones than bf16-rounded activations' (llama.cpp's bf16 path, HF's bf16 run) or FP8 1x128 activations'
   * (W8A8) do (docs/benchmarks.md, issue 13, seventeenth session) — and otherwise left as it is. Decode's
   * GEMV keeps f32 activations. Set process-wide (core's setPrefillActivations), like the thread count.
   */
  prefillActivations?: 'f32' | 'i16';
}

/** An f32 array reused from tensor to tensor while a checkpoint loads (grown to the largest asked for). */
class LoadScratch {
  private buf = new Float32Array(0);
  take(n: number): Float32Array {
    if (this.buf.length < n) this.buf = new Float32Array(n);
    return this.buf.subarray(0, n);
  }
}

/**
 * Reads (or, from a BF16/F32 checkpoint, quantizes at load) one projection as resident FP8. Quantized
 * ones stream into `scratch` as f32 and their codes go straight into the resident storage.
 */
function readFp8(
  ckpt: ShardedCheckpoint,
  name: string,
  config: ModelConfig,
  scratch: LoadScratch,
  takeResident: TakeResident,
): Fp8LinearWeight {
  const info = ckpt.info(name);
  const [n, k] = info.shape as [number, number];
  let storage: CpuStorage;
  let scales: Float32Array;
  if (info.dtype === 'fp8-e4m3') {
    if ((config.quantization?.blockSize[0] ?? 128) !== 128 || (config.quantization?.blockSize[1] ?? 128) !== 128) {
      throw new Error(
        `${name}: FP8 weight storage needs 128x128 scale blocks, the checkpoint has ${config.quantization!.blockSize.join('x')}`,
      );
    }
    storage = takeResident(name, 'fp8-e4m3');
    const nan = fp8NaNIndex(storage.data as Uint8Array);
    if (nan >= 0)
      throw new Error(
        `${name}: element ${nan} (row ${Math.floor(nan / k)}, column ${nan % k}) is an E4M3 NaN code (0x${(storage.data as Uint8Array)[nan]!.toString(16)}); FP8 weights must be finite`,
      );
    scales = ckpt.get(name.replace(/weight$/, 'weight_scale_inv')).data as Float32Array;
  } else if (info.dtype === 'bf16' || info.dtype === 'f32') {
    // a slab of 128 rows at a time (its own row of scale blocks): the head is 0.5 GB of f32 on V3-mini
    storage = cpu.allocResident('fp8-e4m3', n * k, false);
    const kBlocks = Math.ceil(k / 128);
    scales = new Float32Array(Math.ceil(n / 128) * kBlocks);
    for (let r = 0; r < n; r += 128) {
      const rows = Math.min(128, n - r);
      const w = scratch.take(rows * k);
      readTensorRowsInto(ckpt, name, 'f32', r, w);
      const q = (storage.data as Uint8Array).subarray(r * k, (r + rows) * k);
      quantizeWeight(
        w,
        [rows, k],
        { block: 128 },
        { q, scales: scales.subarray((r / 128) * kBlocks, (r / 128 + 1) * kBlocks) },
      );
    }
  } else {
    const q = quantizeWeight(readWeight(ckpt, name, config, 'f32').dataSync() as Float32Array, [n, k], { block: 128 });
    storage = cpu.allocResident('fp8-e4m3', n * k, false);
    storage.data.set(q.q);
    scales = q.scales;
  }
  return { w: new Tensor(cpu, storage, [n, k], 'fp8-e4m3'), scales };
}

/**
 * Projection weights the CPU keeps resident (kv_b_proj stays host f32: the absorbed MLA lays it out per
 * head itself), the routers' weights included (f32: a decode step would otherwise copy each into the
 * engine).
 */
function isResidentWeight(name: string, shape: readonly number[]): boolean {
  return (
    shape.length === 2 &&
    (/_proj(_with_mqa)?\.weight$/.test(name) || name === 'lm_head.weight' || isRouterWeight(name)) &&
    !name.endsWith('kv_b_proj.weight')
  );
}

const isRouterWeight = (name: string): boolean => name.endsWith('.mlp.gate.weight');

const EMBEDDING = 'model.embed_tokens.weight';

/** Weights stored only in a dtype that holds the checkpoint's values exactly. */
const EXACT_ONLY = ['self_attn.o_proj.weight', 'self_attn.kv_a_proj_with_mqa.weight', EMBEDDING];

/**
 * The storage of a resident weight for CPU weights `want`: that dtype, FP8 covering the projections
 * DeepSeek-V3 quantizes (the head stays bf16, as in its checkpoint, unless headDtype 'fp8'); except the
 * routers (f32: f32 scores) and o_proj / kv_a_proj_with_mqa and the embedding, which take bf16 or FP8
 * only where that is the checkpoint's own dtype (`stored`), else f32 — exactly the values they had when
 * they were f32 in every mode, in half the bytes a decode step streams from a BF16 checkpoint
 * (docs/benchmarks.md, issue 13, ninth session).
 */
function residentDType(
  name: string,
  stored: string,
  want: 'f32' | 'bf16' | 'fp8',
  fp8Head: boolean,
): 'f32' | 'bf16' | 'fp8' {
  if (isRouterWeight(name) || want === 'f32') return 'f32';
  if (EXACT_ONLY.some((s) => name.endsWith(s)))
    return stored === 'bf16' ? 'bf16' : want === 'fp8' && stored === 'fp8-e4m3' ? 'fp8' : 'f32';
  if (want === 'bf16') return 'bf16';
  if (name === 'lm_head.weight') return fp8Head ? 'fp8' : 'bf16';
  return name.endsWith('eh_proj.weight') ? 'bf16' : 'fp8';
}

/** Checkpoint tensor `name` in resident storage of `dtype` (converted if stored otherwise), mapped or read. */
type TakeResident = (name: string, dtype: DType) => CpuStorage;

/** Reads one projection weight straight into resident CPU storage of `dtype`. */
function readResident(
  ckpt: ShardedCheckpoint,
  name: string,
  config: ModelConfig,
  dtype: 'f32' | 'bf16',
  takeResident: TakeResident,
): Tensor {
  const info = ckpt.info(name);
  if (info.dtype !== 'fp8-e4m3') return new Tensor(cpu, takeResident(name, dtype), info.shape, dtype);
  const storage = cpu.allocResident(
    dtype,
    info.shape.reduce((a, b) => a * b, 1),
    false,
  );
  const w = readWeight(ckpt, name, config, 'f32').dataSync() as Float32Array;
  if (dtype === 'f32') storage.data.set(w);
  else encodeBf16(w, storage.data as Uint16Array<ArrayBuffer>);
  return new Tensor(cpu, storage, info.shape, dtype);
}

/** A checkpoint directory's config.json, parsed (a clear error when it is missing or invalid). */
export function readConfig(dir: string): ModelConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read ${join(dir, 'config.json')}: ${(e as Error).message}`);
  }
  return parseConfig(raw);
}

function entriesOf(ckpt: ShardedCheckpoint): Map<string, CheckpointEntry> {
  return new Map(ckpt.names().map((n) => [n, { dtype: String(ckpt.info(n).dtype), shape: ckpt.info(n).shape }]));
}

/** Reads one weight as a tensor of `dtype` on `backend`, dequantizing fp8 with its block scales. */
function readWeight(
  ckpt: ShardedCheckpoint,
  name: string,
  config: ModelConfig,
  dtype: 'f32' | 'f64' | 'bf16' | 'f16',
  backend?: Backend,
): Tensor {
  const t = ckpt.get(name);
  if (t.dtype === 'fp8-e4m3') {
    const s = ckpt.get(name.replace(/weight$/, 'weight_scale_inv'));
    const [out, inp] = t.shape as [number, number];
    const w = dequantizeWeight(t.data as Uint8Array, s.data as Float32Array, [out, inp], {
      block: config.quantization?.blockSize[0] ?? 128,
    });
    return cast(fromRaw('f32', t.shape, w, backend), dtype);
  }
  return cast(fromRaw(t.dtype, t.shape, t.data, backend), dtype);
}

/** The prefill activations loadModel sets for these options (LoadOptions.prefillActivations); undefined: none. */
export function prefillActivationsFor(opts: LoadOptions): 'f32' | 'i16' | undefined {
  if (opts.prefillActivations !== undefined) return opts.prefillActivations;
  const lowPrecisionCpu = (opts.backend ?? cpu) === cpu && (opts.weights === 'bf16' || opts.weights === 'fp8');
  return lowPrecisionCpu ? 'i16' : undefined;
}

/** Whether a load with these options keeps resident CPU weights (the ones `mapWeights` maps). */
export function keepsResidentWeights(opts: Pick<LoadOptions, 'backend' | 'dtype' | 'fp8'>): boolean {
  return (opts.backend ?? cpu) === cpu && (opts.dtype ?? 'f32') === 'f32' && opts.fp8 !== 'w8a8';
}

/**
 * Loads a checkpoint directory (config.json + model.safetensors or a sharded index) into a model.
 * Missing or unexpected tensors, wrong shapes or dtypes and truncated files all fail before anything
 * is loaded.
 */
export function loadModel(dir: string, opts: LoadOptions = {}): DeepseekV3ForCausalLM {
  if (opts.prefillActivations === 'i16' && (opts.backend ?? cpu) !== cpu)
    throw new Error(`prefillActivations 'i16' is a CPU mode (backend ${opts.backend!.name})`);
  const prefillActivations = prefillActivationsFor(opts);
  if (prefillActivations !== undefined) setPrefillActivations(prefillActivations);
  const config = readConfig(dir);
  const ckpt = readShardedCheckpoint(dir);
  try {
    validateCheckpoint(config, entriesOf(ckpt), { mtp: true });
    const dtype = (opts.dtype ?? 'f32') as 'f32';
    // Every parameter is overwritten below, so skip the random init.
    const build = (): DeepseekV3ForCausalLM => new DeepseekV3ForCausalLM(config, { ...opts, dtype, init: 'none' });
    const model = (opts.backend ?? cpu) === cpu ? cpu.deferUploads(build) : build();
    const resident = keepsResidentWeights(opts);
    // A GPU keeps bf16 / f16 projections in that dtype (read by the GEMM's tile loads), o_proj f32.
    const deviceHalf = deviceHalfWeights(opts, dtype);
    if ((opts.backend ?? cpu) !== cpu && opts.weights === 'fp8')
      throw new Error(
        `weights 'fp8' keeps FP8 bytes in the CPU's GEMM engine; on ${opts.backend!.name} load FP8 checkpoints with fp8: 'w8a8'`,
      );
    if (opts.mapWeights === true && !resident)
      throw new Error(
        `mapWeights maps resident CPU weights from the file; this load keeps none (backend ${(opts.backend ?? cpu).name}${opts.fp8 === 'w8a8' ? ", fp8 'w8a8'" : ''}${dtype !== 'f32' ? `, dtype ${dtype}` : ''})`,
      );
    const headDtype = opts.headDtype ?? 'bf16';
    if (headDtype !== 'bf16' && headDtype !== 'fp8')
      throw new Error(`headDtype must be 'bf16' or 'fp8', got '${String(headDtype)}'`);
    if (headDtype === 'fp8' && !(resident && opts.weights === 'fp8'))
      throw new Error(
        `headDtype '${opts.headDtype}' needs CPU weights 'fp8' (got weights '${opts.weights ?? 'f32'}' on ${(opts.backend ?? cpu).name}); the head otherwise takes the projections' storage`,
      );
    const fp8Head = headDtype === 'fp8';
    const params = new Map(model.namedParameters());
    const fp8 = new Map<string, Fp8LinearWeight>();
    const scratch = new LoadScratch();
    const mapWeights = opts.mapWeights === 'auto' ? resident : (opts.mapWeights ?? false);
    const read: ReadIntoOptions = { map: mapWeights };
    // ('f16' is a WebGPU mode: deviceHalfWeights refused it on the CPU above.)
    const want = (opts.weights ?? 'f32') as 'f32' | 'bf16' | 'fp8';
    const names = Object.keys(model.stateDict()).filter((name) => !opts.keep || opts.keep(name));
    /** Resident weights replace their parameter's tensor, in this storage dtype (bf16 or fp8 included). */
    const residentStorage = (name: string): 'f32' | 'bf16' | 'fp8' | null => {
      const p = params.get(name);
      return resident && p && (isResidentWeight(name, p.shape) || name === EMBEDDING)
        ? residentDType(name, ckpt.info(checkpointName(config, name)).dtype, want, fp8Head)
        : null;
    };
    /** Whether `name` is kept as the checkpoint stores it (mapped, or its rows read on lookup). */
    const keptAsStored = (name: string): boolean => {
      const storage = residentStorage(name);
      const stored = ckpt.info(checkpointName(config, name)).dtype;
      return storage !== null && (storage === 'fp8' ? stored === 'fp8-e4m3' : storage === stored);
    };
    // Mapped loads map the weights kept as stored first, a file run at a time (few mappings, not one each);
    // the embedding's rows are read from the file as they are looked up (core's readRowsOnLookup): only the
    // rows of the tokens a process sees take memory, whatever size the page cache's folios are.
    const rowsOnLookup =
      mapWeights && params.has(EMBEDDING) && keptAsStored(EMBEDDING) && residentStorage(EMBEDDING) !== 'fp8';
    const premapped = mapWeights
      ? mapResidentTensors(
          ckpt,
          names.filter((name) => name !== EMBEDDING && keptAsStored(name)).map((name) => checkpointName(config, name)),
        )
      : new Map<string, CpuStorage>();
    const takeResident: TakeResident = (ck, dtype) => {
      const st = premapped.get(ck);
      if (!st || ckpt.info(ck).dtype !== dtype) return readResidentTensor(ckpt, ck, dtype, read);
      premapped.delete(ck); // a second parameter stored under the same name reads its own copy
      return st;
    };
    const state: Record<string, Tensor> = {};
    for (const name of names) {
      const ck = checkpointName(config, name);
      const p = params.get(name);
      const storage = residentStorage(name);
      if (p && storage) {
        // The embedding is kept as stored too (its rows widen to f32 as they are looked up); mapped loads
        // read its rows as lookups need them.
        const old = p.value;
        if (name === EMBEDDING && rowsOnLookup) {
          p.value = new Tensor(cpu, readRowsOnLookup(ckpt, ck), ckpt.info(ck).shape, storage as 'f32' | 'bf16');
          if (p.value.dtype === 'f32') p.value.requireGrad(true);
        } else if (storage === 'fp8') {
          const f = readFp8(ckpt, ck, config, scratch, takeResident);
          p.value = f.w;
          fp8.set(name.replace(/\.weight$/, ''), f);
        } else {
          p.value = readResident(ckpt, ck, config, storage, takeResident);
          if (p.value.dtype === 'f32') p.value.requireGrad(true);
        }
        old.dispose();
      } else if (resident && ['bf16', 'f32'].includes(ckpt.info(ck).dtype)) {
        // Host f32 (embedding, norms, router, kv_b_proj): streamed into its storage, no whole-tensor copies.
        const st = cpu.alloc('f32', p?.value.size ?? ckpt.info(ck).shape.reduce((a, b) => a * b, 1));
        readTensorInto(ckpt, ck, 'f32', st.data);
        state[name] = new Tensor(cpu, st, ckpt.info(ck).shape, 'f32');
      } else if (deviceHalf && p && isDeviceHalfWeight(name, p.shape)) {
        replaceWithDeviceHalf(p, readWeight(ckpt, ck, config, deviceHalf, opts.backend));
      } else state[name] = readWeight(ckpt, ck, config, dtype, opts.backend);
    }
    // The MTP layers also store copies of the embedding and head; V3 keeps them equal to the main ones.
    model.loadStateDict(state, { strict: !resident && !deviceHalf && !opts.keep });
    if (fp8.size) useResidentFp8(model, fp8);
    if (opts.fp8 === 'w8a8') useFp8Projections(model, ckpt, opts.backend);
    // The absorbed MLA's per-head layout now, not in the first decode step (only for the layers this
    // process holds when `keep` picks them).
    if (resident)
      for (const [name, mod] of model.namedModules())
        if (mod instanceof MLA && (!opts.keep || opts.keep(`${name}.kv_b_proj.weight`))) mod.prepareCpuInference();
    for (const st of premapped.values()) cpu.free(st);
    // inference weights: greedy decoding may screen the head by an 8-bit copy (core's Linear.argmaxRows)
    if (resident && opts.screenHead !== false) model.lmHead.screenArgmax = true;
    if (opts.warmupTokens) warmUp(model, opts.warmupTokens);
    return model;
  } finally {
    ckpt.close();
  }
}

/**
 * The 16-bit dtype a GPU load keeps projections in, or null. Weights 'f16' (the f16 compute mode) is a
 * WebGPU mode and needs the adapter's shader-f16: anything else gets a clear error here, before loading.
 */
function deviceHalfWeights(opts: LoadOptions, dtype: string): 'bf16' | 'f16' | null {
  const backend = opts.backend ?? cpu;
  if (opts.weights === 'f16') {
    if (!isWebGpu(backend))
      throw new Error(
        `weights 'f16' is the WebGPU f16 compute mode; on ${backend.name} use weights 'bf16' (or 'f32' / 'fp8')`,
      );
    requireShaderF16(backend, "loadModel weights 'f16'");
  }
  if (backend === cpu || dtype !== 'f32') return null;
  return opts.weights === 'bf16' || opts.weights === 'f16' ? opts.weights : null;
}

/**
 * Projections a GPU keeps bf16 / f16: the CPU's resident set less o_proj and kv_a_proj_with_mqa (f32
 * on a GPU, as they were on the CPU before it stored them bf16) and the routers (f32 scores). Routed
 * experts included: the grouped expert GEMM reads bf16 and f16 weights in its tile loads.
 */
function isDeviceHalfWeight(name: string, shape: readonly number[]): boolean {
  return (
    isResidentWeight(name, shape) &&
    !name.endsWith('self_attn.o_proj.weight') &&
    !isRouterWeight(name) &&
    !name.endsWith('kv_a_proj_with_mqa.weight')
  );
}

/** Swaps a parameter's f32 tensor for the device's 16-bit copy (inference: no gradient flows to it). */
function replaceWithDeviceHalf(p: Parameter, w: Tensor): void {
  const old = p.value;
  p.value = w;
  old.dispose();
}

/**
 * Converts a model already on a GPU (built or loaded with f32 weights) to the f16 compute mode (or bf16
 * weight storage) in place: the projections `loadModel` would keep 16-bit are cast on the device.
 * Inference only. Same checks as loadModel's `weights` option.
 */
export function useDeviceHalfWeights(model: DeepseekV3ForCausalLM, weights: 'bf16' | 'f16'): void {
  const backend = model.lmHead.weight.value.backend;
  if (!deviceHalfWeights({ backend, weights }, 'f32'))
    throw new Error(`useDeviceHalfWeights: the model is on ${backend.name}; 16-bit device weights are for a GPU`);
  for (const [name, p] of model.namedParameters())
    if (isDeviceHalfWeight(name, p.shape) && p.value.dtype === 'f32')
      replaceWithDeviceHalf(
        p,
        noGrad(() => cast(p.value, weights)),
      );
}

/** Routes the Linears whose weights were loaded as resident FP8 through the FP8 GEMV/GEMM. */
function useResidentFp8(model: DeepseekV3ForCausalLM, fp8: Map<string, Fp8LinearWeight>): void {
  for (const [name, mod] of model.namedModules()) {
    // Routed experts normally run as grouped GEMMs over their weights; make them call their layers.
    if (mod instanceof MoE) mod.expertsAsModules = true;
    const f = fp8.get(name);
    if (f && mod instanceof Linear) mod.fp8 = f;
  }
}

/**
 * Routes every Linear whose checkpoint weight is fp8 through a W8A8 FP8Linear over those bytes, and
 * the routed experts of each MoE layer through the grouped block-scaled FP8 GEMM over theirs (on every
 * backend: the segment bounds stay on the device).
 */
function useFp8Projections(model: DeepseekV3ForCausalLM, ckpt: ShardedCheckpoint, backend?: Backend): void {
  const { blockSize, scaleFormat } = model.config.quantization!;
  const fp8Weight = (wName: string): QuantizedTensor => {
    const w = ckpt.get(wName);
    const s = ckpt.get(wName.replace(/weight$/, 'weight_scale_inv'));
    const scales = fromRaw(s.dtype, s.shape, s.data, backend);
    return { q: fromRaw(w.dtype, w.shape, w.data, backend), scales: s.dtype === 'f32' ? scales : cast(scales, 'f32') };
  };
  for (const [name, mod] of model.namedModules()) {
    if (mod instanceof MoE) {
      const ck = (e: number, p: string): string => checkpointName(model.config, `${name}.experts.${e}.${p}.weight`);
      if (ckpt.info(ck(0, 'gate_proj')).dtype !== 'fp8-e4m3') continue;
      const proj = (p: string): QuantizedTensor[] =>
        Array.from({ length: mod.config.nRoutedExperts }, (_, e) => fp8Weight(ck(e, p)));
      mod.useFp8Experts(
        { gate: proj('gate_proj'), up: proj('up_proj'), down: proj('down_proj') },
        { block: blockSize[0], scaleFormat },
      );
      continue;
    }
    if (!(mod instanceof Linear) || name.includes('.mlp.experts.')) continue;
    const wName = checkpointName(model.config, `${name}.weight`);
    if (ckpt.info(wName).dtype !== 'fp8-e4m3') continue;
    const { q, scales } = fp8Weight(wName);
    const fp8 = FP8Linear.fromCheckpoint(q, scales, { block: blockSize[0], scaleFormat });
    mod.forward = (x: Tensor): Tensor => fp8.forward(x);
  }
}

/** Writes config.json and the weights (bf16 by default, as published) in the same layout, atomically per file. */
export async function saveModel(
  model: DeepseekV3ForCausalLM,
  dir: string,
  opts: { dtype?: 'bf16' | 'f32'; maxShardBytes?: number } = {},
): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const dtype = opts.dtype ?? 'bf16';
  const tensors: Record<
    string,
    { dtype: Tensor['dtype']; shape: readonly number[]; data: Awaited<ReturnType<Tensor['raw']>> }
  > = {};
  const put = async (name: string, t: Tensor): Promise<void> => {
    const c = cast(t, dtype);
    tensors[name] = { dtype: c.dtype, shape: c.shape, data: await c.raw() };
  };
  for (const [name, t] of Object.entries(model.stateDict())) await put(checkpointName(model.config, name), t);
  for (let k = 0; k < model.mtp.length; k++) {
    const p = `model.layers.${model.config.numHiddenLayers + k}.`;
    await put(`${p}embed_tokens.weight`, model.model.embedTokens.weight.value);
    await put(`${p}shared_head.head.weight`, model.lmHead.weight.value);
  }
  writeShardedCheckpoint(dir, tensors, opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : {});
  const config = JSON.stringify(
    { ...toHfConfig(model.config), torch_dtype: dtype === 'bf16' ? 'bfloat16' : 'float32' },
    null,
    2,
  );
  writeFileAtomic(join(dir, 'config.json'), [new TextEncoder().encode(config)]);
}

export { CheckpointMismatchError };

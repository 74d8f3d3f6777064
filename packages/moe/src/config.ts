// Configuration of the Tensor-level MoE layer: camelCase fields (a superset of the routing GateConfig)
// and the conversion from a Hugging Face `deepseek_v3` / `deepseek_v2` config.json.
import type { GateConfig, GroupScoreRule } from './routing';

/** The gate's part of the configuration (GateConfig without the bias, plus the hidden size). */
export interface MoEGateConfig extends Omit<GateConfig, 'bias' | 'groupScore'> {
  /** H: model width (the gate weight is [E, H]). */
  hiddenSize: number;
  /**
   * The gate holds `e_score_correction_bias` (HF `topk_method: 'noaux_tc'`, V3). Default true.
   * Without it, groups are scored by their max (DeepSeek's V2-style branch) unless `groupScore` says otherwise.
   */
  useCorrectionBias?: boolean | undefined;
  /** Group score rule; default 'top2sum' with the bias, 'max' without (as DeepSeek's Gate). */
  groupScore?: GroupScoreRule | undefined;
}

export interface MoEConfig extends MoEGateConfig {
  /** Width of each routed expert's SwiGLU (HF `moe_intermediate_size`). */
  moeIntermediateSize: number;
  /** Shared experts; they are fused into one SwiGLU of width moeIntermediateSize × nSharedExperts. 0: none. */
  nSharedExperts: number;
}

/** The Hugging Face field names this package reads (others are ignored). */
export interface HfMoEConfig {
  hidden_size?: number;
  n_routed_experts?: number | null;
  num_experts_per_tok?: number | null;
  n_group?: number | null;
  topk_group?: number | null;
  norm_topk_prob?: boolean;
  routed_scaling_factor?: number;
  scoring_func?: string;
  topk_method?: string;
  n_shared_experts?: number | null;
  moe_intermediate_size?: number;
  hidden_act?: string;
  [key: string]: unknown;
}

function int(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new Error(`moeConfigFromHf: ${name} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Converts a Hugging Face DeepSeek config (V3 `noaux_tc`, V2 `group_limited_greedy` or `greedy`) to a
 * MoEConfig. Absent optional fields take transformers' DeepseekV3Config defaults (n_group 8,
 * topk_group 4, norm_topk_prob true, routed_scaling_factor 2.5, scoring_func sigmoid, topk_method
 * noaux_tc, n_shared_experts 1); hidden_size, n_routed_experts, num_experts_per_tok and
 * moe_intermediate_size are required (a dense model has no MoE config).
 */
export function moeConfigFromHf(hf: HfMoEConfig): MoEConfig {
  if (hf === null || typeof hf !== 'object') throw new Error('moeConfigFromHf: expected a config object');
  if (hf.n_routed_experts == null) throw new Error('moeConfigFromHf: n_routed_experts is missing (not an MoE config?)');
  if (hf.hidden_act !== undefined && hf.hidden_act !== 'silu') {
    throw new Error(`moeConfigFromHf: hidden_act ${JSON.stringify(hf.hidden_act)} is not supported (the experts are SwiGLU: 'silu')`);
  }
  const method = hf.topk_method ?? 'noaux_tc';
  if (method !== 'noaux_tc' && method !== 'group_limited_greedy' && method !== 'greedy') {
    throw new Error(`moeConfigFromHf: unknown topk_method ${JSON.stringify(method)} (expected noaux_tc, group_limited_greedy or greedy)`);
  }
  const scoring = hf.scoring_func ?? 'sigmoid';
  if (scoring !== 'sigmoid' && scoring !== 'softmax') {
    throw new Error(`moeConfigFromHf: unknown scoring_func ${JSON.stringify(scoring)} (expected sigmoid or softmax)`);
  }
  const grouped = method !== 'greedy';
  const nGroup = grouped ? int('n_group', hf.n_group ?? 8) : 1;
  const topkGroup = grouped ? int('topk_group', hf.topk_group ?? 4) : 1;
  const scale = hf.routed_scaling_factor ?? 2.5;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new Error(`moeConfigFromHf: routed_scaling_factor must be a finite number`);
  return {
    hiddenSize: int('hidden_size', hf.hidden_size),
    nRoutedExperts: int('n_routed_experts', hf.n_routed_experts),
    numExpertsPerTok: int('num_experts_per_tok', hf.num_experts_per_tok),
    nGroup,
    topkGroup,
    normTopkProb: hf.norm_topk_prob ?? true,
    routedScalingFactor: scale,
    scoringFunc: scoring,
    useCorrectionBias: method === 'noaux_tc',
    groupScore: method === 'noaux_tc' ? 'top2sum' : 'max',
    moeIntermediateSize: int('moe_intermediate_size', hf.moe_intermediate_size),
    nSharedExperts: hf.n_shared_experts == null ? 0 : (hf.n_shared_experts === 0 ? 0 : int('n_shared_experts', hf.n_shared_experts)),
  };
}

function isHf(c: object): c is HfMoEConfig {
  return 'n_routed_experts' in c || 'hidden_size' in c;
}

/** Accepts either a camelCase config or a Hugging Face one. */
export function resolveMoEConfig(c: MoEConfig | HfMoEConfig): MoEConfig {
  return isHf(c) ? moeConfigFromHf(c) : (c as MoEConfig);
}

export function resolveGateConfig(c: MoEGateConfig | HfMoEConfig): MoEGateConfig {
  if (!isHf(c)) return c as MoEGateConfig;
  const { moeIntermediateSize: _m, nSharedExperts: _s, ...gate } = moeConfigFromHf({ moe_intermediate_size: 1, ...c });
  return gate;
}

/**
 * Checks a gate configuration with the same rules (and messages) as the typed-array router, so a bad
 * configuration fails when the module is built rather than at the first forward.
 */
export function validateGateConfig(cfg: MoEGateConfig): void {
  const pos = (name: string, v: number): void => {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
  };
  pos('hiddenSize', cfg.hiddenSize);
  pos('nRoutedExperts', cfg.nRoutedExperts);
  pos('numExpertsPerTok', cfg.numExpertsPerTok);
  pos('nGroup', cfg.nGroup);
  pos('topkGroup', cfg.topkGroup);
  const E = cfg.nRoutedExperts;
  if (E % cfg.nGroup !== 0) throw new Error(`nRoutedExperts=${E} is not divisible by nGroup=${cfg.nGroup}`);
  if (cfg.topkGroup > cfg.nGroup) throw new Error(`topkGroup=${cfg.topkGroup} > nGroup=${cfg.nGroup}`);
  const avail = cfg.topkGroup * (E / cfg.nGroup);
  if (cfg.numExpertsPerTok > avail) {
    throw new Error(`numExpertsPerTok=${cfg.numExpertsPerTok} > experts in the kept groups (topkGroup*E/nGroup = ${avail})`);
  }
  if (!Number.isFinite(cfg.routedScalingFactor)) throw new Error('routedScalingFactor must be finite');
  if (cfg.scoringFunc !== 'sigmoid' && cfg.scoringFunc !== 'softmax') {
    throw new Error(`unknown scoringFunc ${String(cfg.scoringFunc)} (expected 'sigmoid' or 'softmax')`);
  }
  if (cfg.groupScore !== undefined && cfg.groupScore !== 'top2sum' && cfg.groupScore !== 'max') {
    throw new Error(`unknown groupScore ${String(cfg.groupScore)} (expected 'top2sum' or 'max')`);
  }
}

export function validateMoEConfig(cfg: MoEConfig): void {
  validateGateConfig(cfg);
  if (!Number.isInteger(cfg.moeIntermediateSize) || cfg.moeIntermediateSize < 1) {
    throw new Error(`moeIntermediateSize must be a positive integer, got ${cfg.moeIntermediateSize}`);
  }
  if (!Number.isInteger(cfg.nSharedExperts) || cfg.nSharedExperts < 0) {
    throw new Error(`nSharedExperts must be a non-negative integer, got ${cfg.nSharedExperts}`);
  }
}

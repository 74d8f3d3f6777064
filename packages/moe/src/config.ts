// Configuration of the Tensor-level MoE layer: camelCase fields (a superset of the routing GateConfig),
// validated with zod schemas (as @dsv3/model validates its config.json), and the conversion from a
// Hugging Face `deepseek_v3` / `deepseek_v2` config.json or from a model's camelCase fields.
import { z } from 'zod';
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

export type TopkMethod = 'noaux_tc' | 'group_limited_greedy' | 'greedy';

/** A model's MoE fields, camelCase (what @dsv3/model's ModelConfig holds); `moeConfigFromModel` maps them. */
export interface MoEModelFields extends Omit<MoEConfig, 'useCorrectionBias' | 'groupScore'> {
  topkMethod: TopkMethod;
}

export class MoEConfigError extends Error {
  override name = 'MoEConfigError';
}

const show = (v: unknown): string => (typeof v === 'number' ? String(v) : JSON.stringify(v));

/** A positive integer, with the message `${name} must be a positive integer, got ${v}`. */
function positiveInt(name: string) {
  const error = (i: { input: unknown }): string => `${name} must be a positive integer, got ${show(i.input)}`;
  return z.number({ error }).int({ error }).min(1, { error });
}

const gateShape = {
  hiddenSize: positiveInt('hiddenSize'),
  nRoutedExperts: positiveInt('nRoutedExperts'),
  numExpertsPerTok: positiveInt('numExpertsPerTok'),
  nGroup: positiveInt('nGroup'),
  topkGroup: positiveInt('topkGroup'),
  normTopkProb: z.boolean(),
  routedScalingFactor: z
    .number({ error: 'routedScalingFactor must be finite' })
    .refine(Number.isFinite, { error: 'routedScalingFactor must be finite' }),
  scoringFunc: z.enum(['sigmoid', 'softmax'], {
    error: (i) => `unknown scoringFunc ${String(i.input)} (expected 'sigmoid' or 'softmax')`,
  }),
  useCorrectionBias: z.boolean().optional(),
  groupScore: z
    .enum(['top2sum', 'max'], { error: (i) => `unknown groupScore ${String(i.input)} (expected 'top2sum' or 'max')` })
    .optional(),
};

/** The routing rules between fields, with the typed-array router's messages. */
function checkGroups(
  c: { nRoutedExperts: number; nGroup: number; topkGroup: number; numExpertsPerTok: number },
  ctx: z.RefinementCtx,
): void {
  const ints = [c.nRoutedExperts, c.nGroup, c.topkGroup, c.numExpertsPerTok].every(
    (v) => Number.isInteger(v) && v >= 1,
  );
  if (!ints) return;
  const E = c.nRoutedExperts;
  const issue = (path: string, message: string): void => void ctx.addIssue({ code: 'custom', path: [path], message });
  if (E % c.nGroup !== 0) issue('nGroup', `nRoutedExperts=${E} is not divisible by nGroup=${c.nGroup}`);
  else if (c.topkGroup > c.nGroup) issue('topkGroup', `topkGroup=${c.topkGroup} > nGroup=${c.nGroup}`);
  else {
    const avail = c.topkGroup * (E / c.nGroup);
    if (c.numExpertsPerTok > avail)
      issue(
        'numExpertsPerTok',
        `numExpertsPerTok=${c.numExpertsPerTok} > experts in the kept groups (topkGroup*E/nGroup = ${avail})`,
      );
  }
}

const gateSchema = z.object(gateShape).superRefine(checkGroups);

const moeSchema = z
  .object({
    ...gateShape,
    moeIntermediateSize: positiveInt('moeIntermediateSize'),
    nSharedExperts: z
      .number()
      .int()
      .min(0, { error: (i) => `nSharedExperts must be a non-negative integer, got ${show(i.input)}` }),
  })
  .superRefine(checkGroups);

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  if (value === null || typeof value !== 'object') throw new MoEConfigError(`${what}: expected a config object`);
  const r = schema.safeParse(value);
  if (!r.success) throw new MoEConfigError(r.error.issues.map((i) => i.message).join('\n'));
  return r.data;
}

/**
 * Checks a gate configuration with the same rules (and messages) as the typed-array router, so a bad
 * configuration fails when the module is built rather than at the first forward.
 */
export function validateGateConfig(cfg: MoEGateConfig): void {
  parse(gateSchema, cfg, 'MoE gate config');
}

export function validateMoEConfig(cfg: MoEConfig): void {
  parse(moeSchema, cfg, 'MoE config');
}

/**
 * The MoE configuration of a model's camelCase fields: V3's `noaux_tc` keeps the correction bias and
 * scores groups by their top-2 sum; V2's `group_limited_greedy` scores them by their max; `greedy`
 * routes over all experts (one group).
 */
export function moeConfigFromModel(m: MoEModelFields): MoEConfig {
  const grouped = m.topkMethod !== 'greedy';
  return {
    hiddenSize: m.hiddenSize,
    nRoutedExperts: m.nRoutedExperts,
    numExpertsPerTok: m.numExpertsPerTok,
    nGroup: grouped ? m.nGroup : 1,
    topkGroup: grouped ? m.topkGroup : 1,
    normTopkProb: m.normTopkProb,
    routedScalingFactor: m.routedScalingFactor,
    scoringFunc: m.scoringFunc,
    useCorrectionBias: m.topkMethod === 'noaux_tc',
    groupScore: m.topkMethod === 'noaux_tc' ? 'top2sum' : 'max',
    moeIntermediateSize: m.moeIntermediateSize,
    nSharedExperts: m.nSharedExperts,
  };
}

const hfInt = (name: string) => {
  const error = (i: { input: unknown }): string =>
    `moeConfigFromHf: ${name} must be a positive integer, got ${show(i.input)}`;
  return z.number({ error }).int({ error }).min(1, { error });
};

/** `schema`, or `fallback` where the field is absent or null (as transformers reads config.json). */
const orDefault = <T>(schema: z.ZodType<T>, fallback: T) => schema.nullish().transform((v) => v ?? fallback);

// transformers' DeepseekV3Config defaults for absent optional fields
const hfSchema = z.object({
  hidden_size: hfInt('hidden_size'),
  n_routed_experts: z
    .unknown()
    .refine((v) => v != null, {
      error: 'moeConfigFromHf: n_routed_experts is missing (not an MoE config?)',
      abort: true,
    })
    .pipe(hfInt('n_routed_experts')),
  num_experts_per_tok: hfInt('num_experts_per_tok'),
  n_group: orDefault(hfInt('n_group'), 8),
  topk_group: orDefault(hfInt('topk_group'), 4),
  norm_topk_prob: orDefault(z.boolean(), true),
  routed_scaling_factor: orDefault(
    z.number({ error: 'moeConfigFromHf: routed_scaling_factor must be a finite number' }).refine(Number.isFinite, {
      error: 'moeConfigFromHf: routed_scaling_factor must be a finite number',
    }),
    2.5,
  ),
  scoring_func: orDefault(
    z.enum(['sigmoid', 'softmax'], {
      error: (i) => `moeConfigFromHf: unknown scoring_func ${JSON.stringify(i.input)} (expected sigmoid or softmax)`,
    }),
    'sigmoid',
  ),
  topk_method: orDefault(
    z.enum(['noaux_tc', 'group_limited_greedy', 'greedy'], {
      error: (i) =>
        `moeConfigFromHf: unknown topk_method ${JSON.stringify(i.input)} (expected noaux_tc, group_limited_greedy or greedy)`,
    }),
    'noaux_tc',
  ),
  n_shared_experts: orDefault(
    z
      .number()
      .int()
      .min(0, {
        error: (i) => `moeConfigFromHf: n_shared_experts must be a non-negative integer, got ${show(i.input)}`,
      }),
    0,
  ),
  moe_intermediate_size: hfInt('moe_intermediate_size'),
  hidden_act: z
    .literal('silu', {
      error: (i) =>
        `moeConfigFromHf: hidden_act ${JSON.stringify(i.input)} is not supported (the experts are SwiGLU: 'silu')`,
    })
    .optional(),
});

/**
 * Converts a Hugging Face DeepSeek config (V3 `noaux_tc`, V2 `group_limited_greedy` or `greedy`) to a
 * MoEConfig. Absent optional fields take transformers' DeepseekV3Config defaults (n_group 8,
 * topk_group 4, norm_topk_prob true, routed_scaling_factor 2.5, scoring_func sigmoid, topk_method
 * noaux_tc, n_shared_experts 1); hidden_size, n_routed_experts, num_experts_per_tok and
 * moe_intermediate_size are required (a dense model has no MoE config).
 */
export function moeConfigFromHf(hf: HfMoEConfig): MoEConfig {
  const c = parse(hfSchema, hf, 'moeConfigFromHf');
  return moeConfigFromModel({
    hiddenSize: c.hidden_size,
    nRoutedExperts: c.n_routed_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    nGroup: c.n_group,
    topkGroup: c.topk_group,
    normTopkProb: c.norm_topk_prob,
    routedScalingFactor: c.routed_scaling_factor,
    scoringFunc: c.scoring_func,
    topkMethod: c.topk_method,
    moeIntermediateSize: c.moe_intermediate_size,
    nSharedExperts: c.n_shared_experts,
  });
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

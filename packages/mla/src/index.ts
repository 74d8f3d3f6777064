// @dsv3/mla: multi-head latent attention (DeepSeek-V2/V3) — the training form, the absorbed
// inference form, RoPE with YaRN, a paged latent KV cache, and CPU attention kernels registered in
// core's kernel registry. Importing the package registers its kernels (register.ts).
import './register.js';

export {
  MLA,
  mhaPrefillConfig,
  type MLAForwardOptions,
  type MLAAbsorbedOptions,
  type MLAOptions,
} from './mla.js';
export { mlaConfigFromHf, validateMlaConfig, MLAConfigError, type MLAConfig, type YarnScaling } from './config.js';
export {
  ropeParams,
  ropeCosSin,
  applyRope,
  applyRopeArray,
  ropeTensors,
  ropeTensorsAt,
  yarnMscale,
  checkPositions,
  type RopeParams,
} from './rope.js';
export {
  PagedLatentCache,
  CacheError,
  kvElementsPerToken,
  type PagedLatentCacheOptions,
  type CacheDType,
  type LatentRows,
  type LatentInput,
  type KvCacheKind,
  type KvElementsSpec,
} from './cache.js';
export {
  latentAttention,
  pagedLatentAttention,
  composedLatentAttention,
  type LatentAttentionOptions,
  type PagedAttentionOptions,
} from './attention.js';
export {
  FLASH_PREFILL_OP,
  PAGED_ATTENTION_OP,
  type FlashPrefillAttrs,
  type PagedAttentionAttrs,
  type AttentionImpl,
} from './attention-attrs.js';

// Op names and attributes of the latent-attention kernels this package registers in @dsv3/core's
// kernel registry (a 'cpu' and a 'webgpu' implementation each).
export const FLASH_PREFILL_OP = 'mla.flashPrefill';
export const PAGED_ATTENTION_OP = 'mla.pagedAttention';

export interface FlashPrefillAttrs {
  scale: number;
  /** query s sees keys j <= causalOffset + s */
  causalOffset: number;
}

export interface PagedAttentionAttrs {
  scale: number;
  blockSize: number;
}

export type AttentionImpl = 'auto' | 'kernel' | 'composed';

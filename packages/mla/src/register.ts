// Registers this package's kernels in @dsv3/core's registry, once, when the package is loaded: every
// module that runs them imports this file for its side effect (so does index.ts). The kernels only
// run when called.
import { registerKernel } from '@dsv3/core';
import { FLASH_PREFILL_OP, PAGED_ATTENTION_OP } from './attention-attrs.js';
import { flashPrefillCpu, pagedAttentionCpu } from './attention-cpu.js';
import { COPY_ROWS_OP, copyRowsCpu, WRITE_ROWS_OP, writeRowsCpu } from './cache-rows.js';
import { copyRowsWebGpu, writeRowsWebGpu } from './cache-rows-webgpu.js';
import { flashPrefillWebGpu, pagedAttentionWebGpu } from './webgpu.js';

registerKernel(FLASH_PREFILL_OP, 'cpu', flashPrefillCpu);
registerKernel(PAGED_ATTENTION_OP, 'cpu', pagedAttentionCpu);
registerKernel(FLASH_PREFILL_OP, 'webgpu', flashPrefillWebGpu);
registerKernel(PAGED_ATTENTION_OP, 'webgpu', pagedAttentionWebGpu);
registerKernel(WRITE_ROWS_OP, 'cpu', writeRowsCpu);
registerKernel(COPY_ROWS_OP, 'cpu', copyRowsCpu);
registerKernel(WRITE_ROWS_OP, 'webgpu', writeRowsWebGpu);
registerKernel(COPY_ROWS_OP, 'webgpu', copyRowsWebGpu);

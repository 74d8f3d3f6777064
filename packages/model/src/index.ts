// @dsv3/model: the DeepSeek-V3 network from a Hugging Face config and checkpoint.
export * from './config.js';
export * from './presets.js';
export * from './accounting.js';
export * from './weights.js';

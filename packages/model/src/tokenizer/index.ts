export type { Tokenizer, TokenizerFiles, EncodeOptions, DecodeOptions } from './types.js';
export { byteLevelTokenizer, BYTE_LEVEL_BOS, BYTE_LEVEL_EOS, type ByteLevelOptions } from './byte-level.js';
export { huggingFaceTokenizer } from './hf.js';
export { loadTokenizer, saveTokenizer, deepseekV3Tokenizer, DEEPSEEK_V3_VOCAB_SIZE } from './load.js';

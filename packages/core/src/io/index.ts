// Safetensors I/O on raw host arrays (independent of Tensor). Path-based functions need Node >= 20.16;
// in browsers pass bytes to readSafetensors / serializeSafetensors.
export {
  MAX_HEADER_BYTES,
  SAFETENSORS_DTYPES,
  SafetensorsError,
  SafetensorsFile,
  coreDTypeOf,
  isSafetensorsDType,
  rawToI32,
  readSafetensors,
  safetensorsDTypeBytes,
  safetensorsDTypeOf,
  serializeSafetensors,
  writeSafetensors,
} from './safetensors';
export { writeFileAtomic } from './files';
export type {
  ReadSafetensorsOptions,
  SafetensorsDType,
  SafetensorsRawOnlyDType,
  SafetensorsRawTensor,
  SafetensorsTensor,
  SafetensorsTensorInfo,
  SafetensorsWritable,
} from './safetensors';
export {
  DEFAULT_MAX_SHARD_BYTES,
  SHARD_INDEX_FILE,
  SINGLE_CHECKPOINT_FILE,
  ShardedCheckpoint,
  readShardedCheckpoint,
  writeShardedCheckpoint,
} from './sharded';
export type { ShardedTensorInfo, WriteShardedOptions, WriteShardedResult } from './sharded';
export { mapResidentTensors, readResidentTensor, readTensorInto, readTensorRowsInto } from './stream-into';
export { readRowsOnLookup, RowsOnLookup, rowsOnLookupOf } from './rows-on-lookup';
export type { ReadIntoOptions } from './stream-into';

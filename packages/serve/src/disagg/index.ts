// Prefill/decode disaggregation: a router in front of prefill and decode worker processes.
export { RouterCore, keepRegistered, type RouterOptions, type WorkerEntry } from './router.js';
export { PrefillWorker, type PrefillWorkerOptions, type PrefillReply } from './prefill-worker.js';
export { DecodeWorker, type DecodeWorkerOptions } from './decode-worker.js';
export {
  PrefillEngine,
  PrefillAbortedError,
  type PrefillEngineOptions,
  type PrefilledPages,
} from './prefill-engine.js';
export {
  latentBytesPerToken,
  packPages,
  unpackPages,
  PageFormatError,
  type WorkerRole,
  type WorkerStatus,
} from './wire.js';

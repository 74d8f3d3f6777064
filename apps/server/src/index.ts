// apps/server: the OpenAI-compatible inference server over @dsv3/serve.
export { createServer, type Server, type ServerOptions, type ServerState, type Served } from './app.js';
export { ApiError } from './errors.js';
export { ServerMetrics } from './metrics.js';
export { loadServed, type LoadServedOptions } from './load.js';
export {
  runBenchmark,
  formatTable,
  percentiles,
  type BenchOptions,
  type BenchResult,
  type Percentiles,
} from './bench-serve.js';

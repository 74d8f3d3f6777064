// @dsv3/parallel: process groups and collectives over local / tcp / mpi transports, the dsv3-run
// launcher's runtime, pipeline schedules (simulator, executor) and the dsv3-plan cluster planner.
export {
  ProcessGroup,
  DEFAULT_TIMEOUT_MS,
  type GroupOptions,
  type BufferOptions,
  type AllToAllResult,
} from './comm/group.js';
export { Work } from './comm/work.js';
export { initProcessGroup, launchEnv, reportResult, type InitOptions } from './comm/init.js';
export { detectLaunchEnv, firstSlurmHost, slurmTasksOnNode, type LaunchEnv, type Launcher } from './comm/env.js';
export { launchLocal, type LocalLaunchOptions, type LocalRankResult } from './comm/launch-local.js';
export { CollectiveError, CollectiveTimeoutError, PeerFailure, type OpName } from './comm/errors.js';
export { REDUCE_OPS, type ReduceOp } from './comm/reduce.js';
export type { CommBuffer } from './comm/buffers.js';
export type { Transport, TransportKind } from './comm/transport.js';
export { DEFAULT_ALGORITHM_OPTIONS, type AlgorithmOptions } from './comm/algorithms.js';
export { StoreClient, StoreServer } from './comm/store.js';
export { mpiAvailable } from './comm/mpi.js';
export * from './pipeline/index.js';
export * from './plan/index.js';
export * from './layout/index.js';
export * from './ep/index.js';
export * from './zero/index.js';

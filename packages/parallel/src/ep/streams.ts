// Communication streams: a DualPipe FB op runs one chunk's forward and another chunk's backward at once
// on the event loop, so one computes while the other's all-to-all is in flight. Collectives of one
// group must be called in the same order on all its ranks, and two streams interleaving on one group
// would interleave differently on different ranks (each rank's computation takes its own time). So each
// stream gets its own groups: stream 0 uses the groups as given, stream 1 a twin of each (a second group
// over the same ranks, created once at set-up by createLayoutGroups). The stream a piece of code runs in
// follows it across awaits (AsyncLocalStorage), so the EP all-to-alls pick their group when called.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { CommBuffer } from '../comm/buffers.js';
import type { AllToAllResult, ProcessGroup } from '../comm/group.js';
import type { GroupKind } from '../layout/layout.js';

export type CommStream = 0 | 1;

const current = new AsyncLocalStorage<CommStream>();
const twins = new WeakMap<ProcessGroup, ProcessGroup>();

/** Runs `fn` with its EP collectives (and those of everything it awaits) on stream `stream`'s groups. */
export function inCommStream<T>(stream: CommStream, fn: () => Promise<T>): Promise<T> {
  return current.run(stream, fn);
}

/** The stream the caller runs in (0 outside inCommStream). */
export function commStream(): CommStream {
  return current.getStore() ?? 0;
}

/** Makes `twin` (a different group over the same ranks) carry `group`'s collectives in stream 1. */
export function setStreamTwin(group: ProcessGroup, twin: ProcessGroup): void {
  if (twin === group || twin.id === group.id)
    throw new Error(`setStreamTwin: group ${group.id}'s twin must be another group (it is group ${twin.id})`);
  if (twin.ranks.join() !== group.ranks.join())
    throw new Error(
      `setStreamTwin: group ${group.id} has ranks [${group.ranks.join(', ')}], its twin ${twin.id} [${twin.ranks.join(', ')}]; they must be the same`,
    );
  twins.set(group, twin);
}

/** `group` itself in stream 0, its twin in stream 1 (an error when it has none). */
export function streamGroup(group: ProcessGroup): ProcessGroup {
  if (commStream() === 0) return group;
  const twin = twins.get(group);
  if (!twin)
    throw new Error(
      `group ${group.id} (ranks ${group.ranks.join(', ')}) has no twin for communication stream 1: sharing it between two concurrent streams would order its collectives differently on different ranks; create one with createLayoutGroups(world, layout, options, EP_GROUP_KINDS) or run the pipeline with overlapForwardBackward: false`,
    );
  return twin;
}

/**
 * Uneven all-to-all on the caller's stream's group (see ProcessGroup.allToAll), counted in the exposed
 * wait while no other stream has work.
 */
export function streamAllToAll<T extends CommBuffer>(
  group: ProcessGroup,
  buf: T,
  inputSplits?: readonly number[],
  outputSplits?: readonly number[],
): Promise<AllToAllResult<T>> {
  return awaitCollective(streamGroup(group).allToAll(buf, inputSplits, outputSplits).wait());
}

// Exposed wait: time during which every running stream waits for a collective (the thread idles). With
// one stream it is all of the waiting; with an FB pair only what the other chunk's work did not hide.
const idle = { streams: 1, blocked: 0, since: 0, ms: 0 };

const idles = (blocked: number, streams: number): boolean => streams > 0 && blocked >= streams;

function setBlocked(blocked: number, streams: number): void {
  const was = idles(idle.blocked, idle.streams);
  const now = idles(blocked, streams);
  const t = performance.now();
  if (was && !now) idle.ms += t - idle.since;
  if (!was && now) idle.since = t;
  idle.blocked = blocked;
  idle.streams = streams;
}

async function awaitCollective<T>(p: Promise<T>): Promise<T> {
  setBlocked(idle.blocked + 1, idle.streams);
  try {
    return await p;
  } finally {
    setBlocked(idle.blocked - 1, idle.streams);
  }
}

/**
 * Runs `fns` concurrently, the i-th in communication stream i (their EP collectives on separate groups);
 * resolves with their results once all are done (rejects with the first failure, after all settled).
 */
export async function runStreams<A, B>(fns: [() => Promise<A>, () => Promise<B>]): Promise<[A, B]> {
  // The caller's stream becomes two, each of which ends on its own. (Counts, not a state: the ranks of
  // an in-process test share one thread.)
  setBlocked(idle.blocked, idle.streams + 1);
  const done = () => setBlocked(idle.blocked, idle.streams - 1);
  // Stream 1 starts from a macrotask: stream 0 runs on through its already-settled awaits until it
  // blocks on a collective it has issued, and the other chunk's compute then hides that collective.
  const settled = await Promise.allSettled([
    inCommStream(0, fns[0]).finally(done),
    inCommStream(1, async () => {
      await new Promise((resolve) => setImmediate(resolve));
      return fns[1]();
    }).finally(done),
  ]);
  setBlocked(idle.blocked, idle.streams + 1);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as [A, B];
}

/** Milliseconds this thread spent with every stream waiting for an EP collective, since the last reset. */
export function exposedCommWaitMs(): number {
  return idle.ms + (idles(idle.blocked, idle.streams) ? performance.now() - idle.since : 0);
}

export function resetExposedCommWait(): void {
  idle.ms = 0;
  idle.since = performance.now();
}

/** The groups whose collectives an expert-parallel MoE layer issues (the kinds to twin for two streams). */
export const EP_GROUP_KINDS: readonly GroupKind[] = ['ep', 'epIntra', 'epInter'];

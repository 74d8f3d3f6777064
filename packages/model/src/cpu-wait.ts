// How long this process's threads ran and how long they sat runnable, waiting for a CPU (Linux's
// /proc/self/task/*/schedstat). On a shared host the wall time of a 2-thread prefill swings with other
// processes' load (docs/benchmarks.md, issue 13, twentieth session: 620 vs 1650 ms, the threads' on-CPU
// time level); the wait says whether a reading was the code's or the host's.
import { readdirSync, readFileSync } from 'node:fs';

export interface ThreadTimes {
  /** Milliseconds on a CPU. */
  runMs: number;
  /** Milliseconds runnable but waiting on a run queue. */
  waitMs: number;
}

/** One schedstat line: "ns on a CPU, ns waiting on a run queue, timeslices". */
export function parseSchedstat(line: string): ThreadTimes {
  const [run, wait] = line.trim().split(/\s+/).map(Number);
  if (!Number.isFinite(run) || !Number.isFinite(wait)) throw new Error(`schedstat: cannot read '${line}'`);
  return { runMs: run! / 1e6, waitMs: wait! / 1e6 };
}

/** The sums over this process's live threads, or null where schedstat is not there (not Linux). */
export function processThreadTimes(): ThreadTimes | null {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return null;
  }
  const sum = { runMs: 0, waitMs: 0 };
  for (const tid of tids) {
    let line: string;
    try {
      line = readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8');
    } catch {
      continue; // the thread ended between the listing and the read
    }
    const t = parseSchedstat(line);
    sum.runMs += t.runMs;
    sum.waitMs += t.waitMs;
  }
  return sum;
}

/** The times between two readings (null when either is). */
export function threadTimesSince(before: ThreadTimes | null, after: ThreadTimes | null): ThreadTimes | null {
  if (!before || !after) return null;
  return { runMs: after.runMs - before.runMs, waitMs: after.waitMs - before.waitMs };
}

// Per-op timing for finding where a step's time goes: off unless a profile is running, then every
// kernel dispatched through exec and every autograd rule (inclusive of the kernels it runs) adds
// its time under its name: the process's CPU time where there is one (Node; robust on a loaded
// machine), wall time elsewhere. For benchmarks and profiling scripts, not for production paths.

export interface OpTiming {
  calls: number;
  ms: number;
}

let table: Map<string, OpTiming> | null = null;

/** Starts collecting op timings (clearing any previous profile). */
export function startOpProfile(): void {
  table = new Map();
}

/** Stops collecting and returns the timings by op name, slowest first. */
export function stopOpProfile(): [string, OpTiming][] {
  const t = table ?? new Map<string, OpTiming>();
  table = null;
  return [...t.entries()].sort((a, b) => b[1].ms - a[1].ms);
}

/** True while a profile is running (callers skip reading the clock otherwise). */
export function opProfiling(): boolean {
  return table !== null;
}

export function addOpTime(name: string, ms: number): void {
  if (!table) return;
  const e = table.get(name);
  if (e) {
    e.calls++;
    e.ms += ms;
  } else table.set(name, { calls: 1, ms });
}

const hasCpuClock = typeof process !== 'undefined' && typeof process.cpuUsage === 'function';

/** Milliseconds on the profile's clock (process CPU time in Node, wall time elsewhere). */
export function opClock(): number {
  if (!hasCpuClock) return performance.now();
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

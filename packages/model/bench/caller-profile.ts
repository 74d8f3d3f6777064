// The calling thread's V8 CPU profile split by category, for the categories benches (prefill-categories.ts,
// decode-categories.ts): each sample outside the engine's timed calls goes to the nearest frame a rule
// names; the rest to "(idle)" / "(program)" or "other: <leaf> <file>".
import type { Profiler } from 'node:inspector';

/** A category and the function names it claims. */
export type CategoryRule = [string, RegExp];

/**
 * Adds each sample's ms outside `engineCalls` (a stack through one of them is the job's own time) to
 * `outside` under its category; `detail` appends the matching frame and the leaf to the name. `within`
 * keeps only the samples taken at the times (the profile's clock, µs) it accepts (e.g. a step's forward).
 */
export function addOutsideSamples(
  profile: Profiler.Profile,
  engineCalls: ReadonlySet<string>,
  rules: readonly CategoryRule[],
  detail: boolean,
  outside: Map<string, number>,
  within: (atMicros: number) => boolean = () => true,
): void {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of nodes.values()) for (const c of n.children ?? []) parent.set(c, n.id);
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  let at = profile.startTime;
  for (let i = 0; i < samples.length; i++) {
    at += deltas[i] ?? 0;
    const ms = (deltas[i + 1] ?? 0) / 1000;
    if (!within(at)) continue;
    let cat: string | null = null;
    let inJob = false;
    for (let id: number | undefined = samples[i]; id !== undefined; id = parent.get(id)) {
      const f = nodes.get(id)!.callFrame;
      if (engineCalls.has(f.functionName)) {
        inJob = true;
        break;
      }
      if (cat === null) {
        const hit = rules.find(([, re]) => re.test(f.functionName));
        if (hit) cat = detail ? `${hit[0]} <- ${f.functionName}` : hit[0];
      }
    }
    if (inJob) continue;
    const leaf = nodes.get(samples[i]!)!.callFrame;
    if (leaf.functionName === '(idle)' || leaf.functionName === '(program)') cat ??= leaf.functionName;
    if (cat !== null && detail) cat += ` [leaf ${leaf.functionName}]`;
    cat ??= `other: ${leaf.functionName || '(anonymous)'} ${leaf.url.split('/').slice(-3).join('/')}`;
    outside.set(cat, (outside.get(cat) ?? 0) + ms);
  }
}

// Peak RSS of a parallel rank's start-up, before (the whole model built, as every rank did) and after
// sharded start-up (only the rank's shards built): one process per measurement (the test's child,
// test/procs/startup-memory.ts), one at a time.
// Usage: npx tsx --conditions=@dsv3/source bench/startup-memory.ts [--presets tiny,mini]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const presetsArg = process.argv.indexOf('--presets');
const presets = presetsArg >= 0 ? process.argv[presetsArg + 1]!.split(',') : ['tiny', 'mini'];
const child = fileURLToPath(new URL('../test/procs/startup-memory.ts', import.meta.url));
// layout, schedule, rank
const cases: [string, string, number][] = [
  ['ep=4', '1f1b', 0],
  ['pp=2', '1f1b', 1],
  ['dp=2,pp=2,ep=2', 'dualpipe', 0],
  ['pp=4,ep=2', '1f1b', 3],
];
const MiB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
for (const preset of presets) {
  for (const [layout, schedule, rank] of cases) {
    const run = (mode: string) =>
      JSON.parse(
        execFileSync(process.execPath, ['--conditions=@dsv3/source', '--import', 'tsx', child], {
          env: {
            ...process.env,
            PRESET: preset,
            MODE: mode,
            LAYOUT: layout,
            RANK_INDEX: String(rank),
            SCHEDULE: schedule,
          },
          encoding: 'utf8',
        }),
      ) as { growth: number; parameters: number; materializedBytes: number | null };
    const whole = run('whole');
    const mine = run('rank');
    console.log(
      `${preset.padEnd(5)} ${`${layout} ${schedule}`.padEnd(26)} rank ${rank}: whole model ${MiB(whole.parameters * 4)}, start-up peak RSS growth whole build ${MiB(whole.growth)} -> sharded ${MiB(mine.growth)} (holds ${MiB(mine.materializedBytes!)})`,
    );
  }
}

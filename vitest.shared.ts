// Shared vitest settings: workspace packages resolve to their sources, so a fresh clone tests
// without building anything first.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const root = fileURLToPath(new URL('.', import.meta.url));
const pkgs = ['core', 'fp8', 'mla', 'moe', 'mtp', 'model', 'parallel', 'train', 'serve'];

export const workspaceAliases = [
  { find: '@dsv3/core/node', replacement: `${root}packages/core/src/node.ts` },
  { find: '@dsv3/core/testing', replacement: `${root}packages/core/src/testing.ts` },
  ...pkgs.map((p) => ({ find: new RegExp(`^@dsv3/${p}$`), replacement: `${root}packages/${p}/src/index.ts` })),
];

export function packageConfig(extra: { testTimeout?: number } = {}) {
  return defineConfig({
    resolve: { alias: workspaceAliases },
    test: {
      include: ['test/**/*.test.ts'],
      globalSetup: [`${root}vitest.global-setup.ts`],
      testTimeout: extra.testTimeout ?? 60_000,
      hookTimeout: 120_000,
      // a failing toEqual diffs the printouts line by line, quadratic in their length: two 150k-element
      // arrays ran past 13 min, their first 1000 lines take ~1 s (big arrays: expectSameBits, core/testing)
      diff: { truncateThreshold: 1000 },
      pool: 'forks',
    },
  });
}

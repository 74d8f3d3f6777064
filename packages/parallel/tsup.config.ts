import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts', 'launcher/cli': 'src/launcher/cli.ts', 'plan-cli': 'src/plan/cli.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'es2022',
  shims: true,
});

import { defineConfig } from 'tsup';

export default defineConfig({
  entry: ['src/index.ts', 'src/launcher/cli.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'es2022',
  shims: true,
});

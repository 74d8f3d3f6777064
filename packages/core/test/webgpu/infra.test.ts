// Backend infrastructure: buffer pool reuse, command batching, chunked execution beyond the
// storage-binding limit, readback of packed widths, zero-filled allocation, errors, dispose and
// process exit.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../src/index.js';
import { cpu, type DType, type Tensor } from '../../src/index.js';
import { exec } from '../../src/ops/exec.js';
import type { WebGpuBackend } from '../../src/webgpu/index.js';
import { acquireGpu, compareOp, cpuT, rint, rnd, toGpu } from './gpu.js';

const gpu = await acquireGpu();
// A second device that pretends storage bindings are limited to 8 KiB, to exercise chunking.
const small = gpu ? await acquireGpu({ bindingLimit: 8192 }) : null;
afterAll(() => {
  gpu?.dispose();
  small?.dispose();
});

const f = (n: number, seed: number, dtype: DType = 'f32'): Tensor => cpuT(dtype, [n], rnd(n, seed, -2, 2));

describe.skipIf(!gpu)('webgpu backend infrastructure', () => {
  const be = gpu!;

  it('describes the adapter so a software fallback is visible', () => {
    const info = be.adapterInfo;
    for (const k of ['vendor', 'architecture', 'device', 'description'] as const) expect(typeof info[k]).toBe('string');
    expect(be.limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
    expect(typeof be.subgroupMatrixStatus).toBe('string');
    if (info.isFallbackAdapter) console.warn(`[webgpu tests] running on a software adapter: ${info.description}`);
  });

  it('reuses freed buffers and batches dispatches into few submits', async () => {
    const x = toGpu(f(1000, 1), be);
    const one = toGpu(cpuT('f32', [1], [1]), be);
    const before = be.stats();
    let y = x;
    for (let i = 0; i < 40; i++) {
      const z = T.add(y, one);
      if (y !== x) y.dispose();
      y = z;
    }
    const vals = await y.data();
    expect(vals[0]).toBeCloseTo((await x.data())[0]! + 40, 4);
    const after = be.stats();
    expect(after.dispatches - before.dispatches).toBe(40);
    expect(after.submits - before.submits).toBeLessThanOrEqual(4);
    expect(after.buffersReused - before.buffersReused).toBeGreaterThan(20);
  });

  it('counts every buffer mapped for reading: reads and syncs, never dispatches or uploads', async () => {
    const before = be.readbacks;
    const x = toGpu(f(64, 3), be);
    const y = T.mul(T.add(x, x), x);
    expect(be.readbacks).toBe(before);
    await y.data();
    expect(be.readbacks).toBe(before + 1);
    await be.sync();
    expect(be.readbacks).toBe(before + 2);
    expect(be.stats().readbacks).toBe(before + 2);
  });

  it('alloc() is zero-filled even when it reuses a dirty buffer', async () => {
    const dirty = be.upload('f32', new Float32Array(256).fill(7));
    be.free(dirty);
    be.flush();
    const s = be.alloc('f32', 256);
    expect(Array.from((await be.read(s, 'f32', 256)) as Float32Array).every((v) => v === 0)).toBe(true);
  });

  it('reads back odd-sized packed tensors and empty ones', async () => {
    for (const dtype of ['f16', 'bf16', 'u8', 'bool', 'fp8-e4m3'] as DType[]) {
      for (const n of [0, 1, 3, 5, 1027]) {
        const data =
          dtype === 'f16' || dtype === 'bf16'
            ? Uint16Array.from(rint(n, n, 0, 65536))
            : Uint8Array.from(rint(n, n, 0, dtype === 'bool' ? 2 : 256));
        const t = T.fromRaw(dtype, [n], data, be);
        expect(Array.from(await t.raw())).toEqual(Array.from(data));
      }
    }
  });

  it('rejects f64 with a clear error', () => {
    expect(be.supportsDType('f64')).toBe(false);
    expect(() => be.alloc('f64', 4)).toThrow(/f64/);
    expect(() => T.tensor(new Float64Array(3), { backend: be })).toThrow(/webgpu.*f64/);
  });

  it('times GPU work', async () => {
    const a = toGpu(cpuT('f32', [64, 64], rnd(4096, 5)), be);
    const r = await be.timeGpu(() => {
      exec('matmul', [a, a], { transA: false, transB: false }, be);
    });
    expect(r).not.toBeNull();
    expect(r!.ms).toBeGreaterThanOrEqual(0);
  });

  it.skipIf(!small)('chunks elementwise kernels beyond the storage binding limit', async () => {
    const sb = small!;
    expect(sb.bindingLimit).toBe(8192);
    // 10 000 f32 = 40 KB: five chunks of 2048 elements
    await compareOp(sb, 'unary', [f(10000, 10)], { op: 'exp' });
    await compareOp(sb, 'binary', [f(10000, 11), f(10000, 12)], { op: 'mul' });
    await compareOp(sb, 'binary', [f(10000, 13), cpuT('f32', [1], [3])], { op: 'sub' });
    await compareOp(sb, 'binary', [cpuT('f32', [2000, 5], rnd(10000, 14)), cpuT('f32', [5], rnd(5, 15))], {
      op: 'add',
    });
    await compareOp(sb, 'binary', [f(10001, 16, 'f16'), f(10001, 17, 'f16')], { op: 'add' }, { exact: true });
    await compareOp(sb, 'cast', [f(10001, 18)], { dtype: 'bf16' }, { exact: true });
    await compareOp(sb, 'cast', [f(10001, 19, 'bf16')], { dtype: 'f32' }, { exact: true });
    await compareOp(
      sb,
      'where',
      [cpuT('bool', [10003], rint(10003, 20, 0, 2)), f(10003, 21), f(10003, 22)],
      {},
      { exact: true },
    );
    await compareOp(sb, 'full', [], { shape: [3, 4001], dtype: 'u8', value: 9 }, { exact: true });
    await compareOp(sb, 'strided', [f(10000, 23)], { shape: [10000], strides: [1], offset: 0 }, { exact: true });
  });

  it.skipIf(!small)('names the binding limit when an input cannot be chunked', async () => {
    const sb = small!;
    const big = toGpu(f(10000, 30), sb);
    expect(() => exec('strided', [big], { shape: [100, 100], strides: [1, 100], offset: 0 }, sb)).toThrow(
      /maxStorageBufferBindingSize/,
    );
    const m = toGpu(cpuT('f32', [100, 100], rnd(10000, 31)), sb);
    expect(() => exec('matmul', [m, m], { transA: false, transB: false }, sb)).toThrow(/maxStorageBufferBindingSize/);
  });

  it('a disposed backend refuses work; a lost device reports why', async () => {
    const other = (await acquireGpu()) as WebGpuBackend;
    const x = T.tensor([1, 2, 3], { backend: other });
    other.device.destroy();
    await new Promise((r) => setTimeout(r, 50));
    await expect((async () => T.mul(x, x).data())()).rejects.toThrow(/lost|destroyed|disposed/i);
    other.dispose();
    expect(() => T.tensor([1], { backend: other })).toThrow(/disposed/);
  });

  it('lets the process exit after dispose()', () => {
    const child = fileURLToPath(new URL('./fixtures/exit-child.mts', import.meta.url));
    const r = spawnSync(process.execPath, ['--import', 'tsx', child], {
      encoding: 'utf8',
      timeout: 60_000,
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
    });
    expect(r.error, String(r.error)).toBeUndefined();
    expect(r.stdout, r.stderr).toContain('ok 1,4,9');
    expect(r.status).toBe(0);
  });
});

void cpu;

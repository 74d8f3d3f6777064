// The GEMM workers poll for the next job for gemmConfig.spinMicros after their last task, then sleep:
// the knob must reach them (a long spin shows as CPU used while the process idles) and the default
// must leave an idle process at ~0 CPU. GEMV jobs under gemmConfig.wakeMinWork (and, counting FP8
// products only, wakeMinWorkFp8) leave sleeping workers asleep.
import { afterAll, describe, expect, it } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { gemmInfo, setGemmThreads, weightProduct } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { randomUniform } from '../src/testing.js';

const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));

/** CPU milliseconds the whole process (all threads) uses over `ms` of idling after a threaded product. */
async function idleCpuAfterProduct(ms: number): Promise<number> {
  const [n, k] = [256, 512];
  const x = Float32Array.from(randomUniform(k, 1));
  const w = Float32Array.from(randomUniform(n * k, 2));
  weightProduct({ m: 1, n, k, x, w, y: new Float32Array(n) });
  const before = process.cpuUsage();
  await new Promise((r) => setTimeout(r, ms));
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

describe('worker spin before sleeping', () => {
  it('a long spin keeps the worker busy while the process idles; the default stops within milliseconds', async () => {
    setGemmThreads(2);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
    if (gemmInfo().threads < 2) return; // no worker threads on this engine: nothing spins
    gemmConfig.spinMicros = 250_000;
    await idleCpuAfterProduct(50); // spawn the worker and let its first spin run out
    await new Promise((r) => setTimeout(r, 300));
    const spinning = await idleCpuAfterProduct(200);
    gemmConfig.spinMicros = saved.spinMicros;
    await idleCpuAfterProduct(300); // the long spin from the last call runs out
    const idle = await idleCpuAfterProduct(300);
    // The spinning worker polls for 200 ms of the window (less when a loaded machine deschedules it).
    expect(spinning).toBeGreaterThan(40);
    expect(idle).toBeLessThan(30);
  });
});

describe('small GEMV jobs do not wake sleeping workers', () => {
  it('under wakeMinWork the caller runs them alone; above it (or with wakeMinWork 0) the workers take tasks', async () => {
    setGemmThreads(2);
    const engine = getEngine();
    if (!engine?.canThread()) return;
    gemmConfig.threadMinWork = 0;
    gemmConfig.spinMicros = 0;
    const [n, k] = [64, 256];
    const x = Float32Array.from(randomUniform(k, 3));
    const w = Float32Array.from(randomUniform(n * k, 4));
    const product = () => weightProduct({ m: 1, n, k, x, w, y: new Float32Array(n) });
    gemmConfig.wakeMinWork = 0;
    const deadline = Date.now() + 30_000;
    const first = engine.workerTasks();
    while (engine.workerTasks() === first && Date.now() < deadline) {
      product(); // spawns the worker; a fresh one needs a moment to boot
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(engine.workerTasks()).toBeGreaterThan(first);
    gemmConfig.wakeMinWork = n * k + 1;
    await new Promise((r) => setTimeout(r, 100)); // the worker is asleep now
    const asleep = engine.workerTasks();
    for (let i = 0; i < 50; i++) product();
    expect(engine.workerTasks()).toBe(asleep);
    gemmConfig.wakeMinWork = n * k; // at the threshold: woken
    const deadline2 = Date.now() + 30_000;
    while (engine.workerTasks() === asleep && Date.now() < deadline2) {
      product();
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(engine.workerTasks()).toBeGreaterThan(asleep);
  });
});

describe('the FP8 wake threshold counts FP8 products only', () => {
  /** Runs `product` until the worker takes a task (true) or 30 s pass (false). */
  async function wakes(engine: NonNullable<ReturnType<typeof getEngine>>, product: () => void): Promise<boolean> {
    const before = engine.workerTasks();
    const deadline = Date.now() + 30_000;
    while (engine.workerTasks() === before && Date.now() < deadline) {
      product(); // a fresh worker needs a moment to boot
      await new Promise((r) => setTimeout(r, 5));
    }
    return engine.workerTasks() > before;
  }

  it('an FP8 job at wakeMinWorkFp8 wakes the workers under wakeMinWork; one under it, or a bf16 job, does not', async () => {
    setGemmThreads(2);
    const engine = getEngine();
    if (!engine?.canThread()) return;
    gemmConfig.threadMinWork = 0;
    gemmConfig.spinMicros = 0;
    const [n, k] = [128, 256];
    const x = Float32Array.from(randomUniform(k, 5));
    const fp8 = Uint8Array.from({ length: n * k }, (_, i) => (i * 37) % 126); // finite E4M3 bytes
    const scales = new Float32Array(Math.ceil(n / 128) * Math.ceil(k / 128)).fill(0.5);
    const bf16 = Uint16Array.from({ length: n * k }, (_, i) => 0x3f80 + (i % 64));
    const fp8Product = () => weightProduct({ m: 1, n, k, x, w: fp8, scales, y: new Float32Array(n) });
    const bf16Product = () => weightProduct({ m: 1, n, k, x, w: bf16, y: new Float32Array(n) });
    gemmConfig.wakeMinWork = 0;
    gemmConfig.wakeMinWorkFp8 = 0;
    expect(await wakes(engine, fp8Product)).toBe(true); // the worker exists and takes FP8 tasks
    gemmConfig.wakeMinWork = n * k * 100;
    gemmConfig.wakeMinWorkFp8 = n * k + 1;
    await new Promise((r) => setTimeout(r, 100)); // the worker is asleep now
    const asleep = engine.workerTasks();
    for (let i = 0; i < 50; i++) fp8Product();
    expect(engine.workerTasks()).toBe(asleep);
    gemmConfig.wakeMinWorkFp8 = 0; // an FP8 threshold a bf16 job's work must not meet
    for (let i = 0; i < 50; i++) bf16Product();
    expect(engine.workerTasks()).toBe(asleep);
    gemmConfig.wakeMinWorkFp8 = n * k; // at the threshold: woken
    expect(await wakes(engine, fp8Product)).toBe(true);
  });
});

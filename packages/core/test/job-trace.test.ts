// The engine's job-trace hook (gemmConfig.jobTrace) and worker timing (workerBusy), bench diagnostics:
// a threaded product reports one job with its multiply-adds and a task split that adds up, a job
// started behind a posted background product sees it pending, the background collection is reported,
// the workers' busy time (and their gate waits) is counted only while timing is on — and none of it changes a product's bits.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { gemmConfig, type TracedJob } from '../src/cpu/gemm/config.js';
import { sgemm, sgemmDeferred } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { deferringPass } from '../src/deferred.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterAll(() => {
  getEngine()?.workerBusy(false);
  Object.assign(gemmConfig, saved);
});
const rng = new Rng(5);
const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;

function product(m: number, n: number, k: number) {
  return { m, n, k, a: rand(m * k), b: rand(k * n), c: new Float32Array(m * n) };
}

describe('gemmConfig.jobTrace', () => {
  it('reports a threaded product as one job whose task split adds up, with the same bits as untraced', () => {
    T.setGemmThreads(2);
    const p = product(256, 192, 160);
    sgemm(p);
    const untraced = p.c.slice();
    const jobs: TracedJob[] = [];
    gemmConfig.jobTrace = (j) => jobs.push(j);
    try {
      p.c.fill(Number.NaN);
      sgemm(p);
    } finally {
      gemmConfig.jobTrace = null;
    }
    expect(Buffer.from(p.c.buffer).equals(Buffer.from(untraced.buffer))).toBe(true);
    expect(jobs.length).toBe(1);
    const [j] = jobs as [TracedJob];
    expect(j.what).toBe('sgemm');
    expect(j.work).toBe(256 * 192 * 160);
    expect(j.tasks).toBeGreaterThan(1);
    expect(j.callerTasks).toBeGreaterThanOrEqual(0);
    expect(j.callerTasks).toBeLessThanOrEqual(j.tasks);
    expect(j.workMs).toBeGreaterThanOrEqual(0);
    expect(j.waitMs).toBeGreaterThanOrEqual(0);
    expect(j.backgroundPosted).toBe(0);
    // A worker's join time is within the job, or -1 when it ran none of the tasks.
    if (j.callerTasks < j.tasks) expect(j.joinMs).toBeGreaterThanOrEqual(0);
    else expect(j.joinMs).toBe(-1);
    expect(j.joinMs).toBeLessThanOrEqual(j.workMs + 1e-9);
    // the caller's waits at the gate (stripes wait for the packed B) are part of its working time
    expect(j.gateMs).toBeGreaterThanOrEqual(0);
    expect(j.gateMs).toBeLessThanOrEqual(j.workMs + 1e-9);
  });

  it('a job behind posted background products sees them posted; their collection is reported', () => {
    T.setGemmThreads(2);
    const jobs: TracedJob[] = [];
    gemmConfig.jobTrace = (j) => jobs.push(j);
    try {
      deferringPass(() => {
        for (let i = 0; i < 4; i++) expect(sgemmDeferred(product(320, 128, 1024))).toBe(true);
        sgemm(product(256, 192, 160));
      });
    } finally {
      gemmConfig.jobTrace = null;
    }
    const job = jobs.find((j) => j.what === 'sgemm')!;
    expect(job.backgroundPosted).toBeGreaterThan(0);
    // A first pass may collect early (the staging block grows): the collections hold the 4 products.
    const finishes = jobs.filter((j) => j.what === 'background finish');
    expect(finishes.reduce((s, j) => s + j.tasks, 0)).toBe(4);
    for (const f of finishes) expect(f.work).toBe(0);
  });
});

describe('workerBusy', () => {
  it('counts the workers’ task time only while on, and resets on every call', async () => {
    T.setGemmThreads(2);
    const e = getEngine()!;
    e.workerBusy(false);
    for (let i = 0; i < 4; i++) sgemm(product(512, 512, 256));
    expect(e.workerBusy(true)).toEqual({ jobMs: 0, backgroundMs: 0, jobGateMs: 0 });
    const before = e.workerTasks();
    const t0 = performance.now();
    for (let i = 0; i < 8; i++) sgemm(product(512, 512, 256));
    const wall = performance.now() - t0;
    const ran = e.workerTasks() - before;
    const busy = e.workerBusy(false);
    // A worker that took a task spent measurable time in it (a 512-row stripe of 512 x 256 is ~1 ms).
    if (ran > 0) expect(busy.jobMs).toBeGreaterThan(0);
    expect(busy.backgroundMs).toBe(0);
    // the workers' waits between claiming a task and starting it: within the jobs' wall with their tasks
    expect(busy.jobGateMs).toBeGreaterThanOrEqual(0);
    expect(busy.jobGateMs + busy.jobMs).toBeLessThanOrEqual(wall + 1);
    expect(e.workerBusy(false)).toEqual({ jobMs: 0, backgroundMs: 0, jobGateMs: 0 });
  });
});

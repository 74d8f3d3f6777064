// Command batching: dispatches, copies and clears are recorded into one command encoder (one
// compute pass while only dispatches follow each other) and submitted together when a readback or
// sync needs the results, or after `maxDispatches`. Kernel parameters go into a uniform arena
// written once per submit (queue.writeBuffer is ordered after earlier submits, so one arena buffer
// is reused safely). The pool is told at each submit, so buffers freed while this encoder was
// open become reusable by uploads too.

import { BufferUsage } from './constants.js';

export interface BatchOptions {
  maxDispatches: number;
  arenaBytes: number;
  uniformAlign: number;
  /** called after each submit */
  onSubmit: () => void;
}

export interface TimerState {
  querySet: GPUQuerySet;
  begun: boolean;
}

export class CommandBatch {
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private dispatches = 0;
  private readonly arenaCpu: Uint8Array<ArrayBuffer>;
  private readonly arenaGpu: GPUBuffer;
  private arenaUsed = 0;
  private timer: TimerState | null = null;
  /** submits so far, and dispatches recorded in total (for tests and stats) */
  submits = 0;
  totalDispatches = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly opts: BatchOptions,
  ) {
    this.arenaCpu = new Uint8Array(opts.arenaBytes);
    this.arenaGpu = device.createBuffer({
      size: opts.arenaBytes,
      usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST,
      label: 'dsv3:params',
    });
  }

  get pending(): number {
    return this.dispatches;
  }

  private enc(): GPUCommandEncoder {
    return (this.encoder ??= this.device.createCommandEncoder({ label: 'dsv3:batch' }));
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  dispatch(
    pipeline: GPUComputePipeline,
    layout: GPUBindGroupLayout,
    buffers: GPUBufferBinding[],
    params: Uint32Array,
    workgroups: readonly [number, number, number],
  ): void {
    const size = Math.max(16, Math.ceil(params.byteLength / 16) * 16);
    let offset = Math.ceil(this.arenaUsed / this.opts.uniformAlign) * this.opts.uniformAlign;
    if (offset + size > this.opts.arenaBytes || (this.dispatches >= this.opts.maxDispatches && !this.timer)) {
      this.flush();
      offset = 0;
    }
    this.arenaCpu.set(new Uint8Array(params.buffer, params.byteOffset, params.byteLength), offset);
    this.arenaUsed = offset + size;
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.arenaGpu, offset, size } }];
    for (let i = 0; i < buffers.length; i++) entries.push({ binding: i + 1, resource: buffers[i]! });
    const bindGroup = this.device.createBindGroup({ layout, entries });
    if (!this.pass) {
      const desc: GPUComputePassDescriptor = {};
      if (this.timer && !this.timer.begun) {
        desc.timestampWrites = { querySet: this.timer.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 };
        this.timer.begun = true;
      }
      this.pass = this.enc().beginComputePass(desc);
    }
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(workgroups[0], workgroups[1], workgroups[2]);
    this.dispatches++;
    this.totalDispatches++;
  }

  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.endPass();
    this.enc().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  clear(buffer: GPUBuffer, offset = 0, size?: number): void {
    this.endPass();
    this.enc().clearBuffer(buffer, offset, size);
  }

  /** Records the end of a timed span: the following dispatches go to one pass with timestamps. */
  startTimer(querySet: GPUQuerySet): void {
    this.flush();
    this.timer = { querySet, begun: false };
  }

  stopTimer(resolveTo: GPUBuffer): boolean {
    const t = this.timer;
    this.timer = null;
    this.endPass();
    if (!t?.begun) return false;
    this.enc().resolveQuerySet(t.querySet, 0, 2, resolveTo, 0);
    return true;
  }

  /** Whether recorded commands are waiting to be submitted. */
  get open(): boolean {
    return this.encoder !== null;
  }

  flush(): void {
    this.endPass();
    if (!this.encoder) return;
    if (this.arenaUsed > 0)
      this.device.queue.writeBuffer(this.arenaGpu, 0, this.arenaCpu, 0, Math.ceil(this.arenaUsed / 4) * 4);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.dispatches = 0;
    this.arenaUsed = 0;
    this.submits++;
    this.opts.onSubmit();
  }

  destroy(): void {
    this.encoder = null;
    this.pass = null;
    this.arenaGpu.destroy();
  }
}

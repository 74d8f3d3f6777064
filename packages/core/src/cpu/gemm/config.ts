// Internal tuning knobs and test hooks (not part of the public API).

export const gemmConfig = {
  /** Requested thread count (set by setGemmThreads); null = platform default. */
  threads: null as number | null,
  /** Below this many multiply-adds (summed over the batch) stay on the calling thread. */
  threadMinWork: 64 * 64 * 64,
  /**
   * Microseconds a worker thread keeps polling for the next product after finishing its last task,
   * before it sleeps in Atomics.wait (bounded: an idle process stops using CPU this long after its
   * last product). A decode step's products come back to back, and a sleeping worker costs a futex
   * wake-up on each. 150: about what the earlier fixed 20000 polls took here; longer spins measured
   * slower on the loaded 2-core machine (the spinning worker takes its process's CPU share), see
   * docs/benchmarks.md (issue 13, sixth session).
   */
  spinMicros: 150,
  /**
   * A GEMV job below this many multiply-adds runs on the calling thread alone while the workers are
   * asleep (past their spin): waking one (Atomics.notify, and the woken thread taking the caller's
   * core on a busy machine) costs about what the product does. Workers still spinning join any job
   * above threadMinWork.
   */
  wakeMinWork: 4 << 20,
  /**
   * The same threshold for a job's FP8 multiply-adds alone: FP8's kernel is bound by its decode
   * instructions on one core (bf16's by memory), so the second core pays for itself on smaller FP8
   * jobs. A job wakes the workers when either count reaches its threshold. 2 Mi wakes them for a
   * V3-mini MoE layer's expert gate/up job at decode (7 x 2 x 256 x 1024) but not its down job or the
   * MLA projections: 1.11-1.17x FP8 decode over 4 Mi in two interleaved A/Bs (1 Mi and 0: between),
   * docs/benchmarks.md (issue 13, tenth session).
   */
  wakeMinWorkFp8: 2 << 20,
  /**
   * Whether a backward pass's weight gradients may run on the workers in the background
   * (sgemmDeferred, deferred-products.ts); false runs them in the pass's own jobs (for A/Bs).
   */
  deferProducts: true,
  /**
   * Whether the CPU kernels' f32 outputs from the free list (takeF32) live in the first engine's
   * memory while it has room, so the products read them in place instead of staging a copy; false
   * keeps them in host memory (for A/Bs).
   */
  residentOutputs: true,
  /**
   * Most bytes of such outputs alive at once; past it takeF32 hands out host arrays (see
   * resident-outputs.ts: garbage in the engine's memory does not prompt V8 to collect, host arrays do).
   */
  residentOutputBytes: 512 * 1024 * 1024,
  /**
   * f32 weight products of at most this many rows run on the weight GEMM (in its panel order where A~ for
   * all of k fits a thread's workspace, else its blocked order); more rows take the f32 GEMM, whatever k
   * (training's 1,024-row products: 1.01-1.03x the tiny step, docs/benchmarks.md, issue 11, eighteenth
   * session). Both give the same bits, and bench/f32-weight-route-ab.ts at 2 threads measured the weight
   * GEMM 1.12-1.31x faster to 512 rows (128 / 192 / 512 x 1024 x 2816), level at 1024-2048, 0.95x at
   * 4096 x 1024 x 1024 and 1024 x 256 x 1024 (docs/benchmarks.md, issue 13, fifteenth session). The f32 GEMM also packs all of B into
   * scratch: 11.5 MB for V3-mini's dense down projection, first touched by the first long prefill.
   */
  f32WeightGemmMaxRows: 512,
  /**
   * Activations of bf16 / FP8 weight products on the weight GEMM (prefill): 'f32' (default) widens the
   * weights to f32 in the packing; 'i16' quantizes x to i16 per row and 128 depths and the weights to
   * i16 per column and 128 depths, and sums with i32x4.dot_i16x8_s (i16-gemm-kernel.ts: the error
   * bounds). Process-wide, like the thread count; the GEMV (decode) keeps f32 activations.
   */
  prefillActivations: 'f32' as 'f32' | 'i16',
  /** Rows from which such a product takes the i16 route under prefillActivations 'i16'. */
  i16MinRows: 16,
  /**
   * Accuracy-study hook (bench/prefill-activations-accuracy.ts): under prefillActivations 'f32', rounds in
   * place the staged activation rows (dense [m, k]) of exactly the products the i16 route would take, so
   * other activation formats (bf16, FP8 1x128) can be measured on the same products; null (default): none.
   */
  roundPrefillActivations: null as ((rows: Float32Array, m: number, k: number) => void) | null,
  /**
   * Most pieces MLA's decode attention cuts a block's keys into (latent-attention.ts: flash-decoding, the
   * pieces' f64 softmax states merged on the caller); 1 keeps every block whole (for A/Bs). The pieces
   * depend on the key count alone, never on the thread count, so the bits do not either.
   */
  latentKeyPieces: 2,
  /**
   * Fewest keys a decode block is split at (each piece then holds at least half of them). 512, woken at
   * 512 (latentWakeMinKeys): V3-mini's FP8 step at 513-576 keys, 10th percentile of its steps, 1.077x and
   * 1.079x of whole blocks in two A/Bs (load 3.2-5.0); waking only a spinning worker 1.043x / 1.064x —
   * docs/benchmarks.md, issue 13, sixteenth session.
   */
  latentSplitMinKeys: 512,
  /**
   * One decode block split by keys (a batch-1 step's attention, otherwise one task on the caller) wakes
   * sleeping workers from this many keys; below it the caller runs every piece while the workers sleep.
   * Workers still spinning after the previous job always join; jobs of several blocks (a batch) use the
   * threads as before. Waking at the attention also keeps the worker spinning into the step's next
   * products: fewer wakes a step, not more, in the A/Bs above.
   */
  latentWakeMinKeys: 512,
  /** Tasks per thread in a threaded call: >1 lets a thread that finishes early take more work. */
  tasksPerThread: 4,
  /**
   * Whether engines created from now on run the native kernels (native-kernels.ts: AVX-512, the wasm
   * kernels' bits) where they are built and the CPU has them; false keeps the wasm kernels (for A/Bs;
   * DSV3_NATIVE_KERNELS=0 does the same for a whole process).
   */
  nativeKernels: true,
  /**
   * Whether engines created from now on ask Linux for transparent huge pages under their (shared)
   * memory, through the native addon (native-kernels.ts adviseHugePages); DSV3_HUGE_PAGES=0 turns it
   * off for a whole process. Where THP is "madvise" the memory otherwise gets 4 KiB pages only: a
   * fault each on first touch (~20 µs on a VM: most of a model's load) and a page walk every 4 KiB a
   * kernel streams.
   */
  hugePages: true,
  /** Force the pure-JS kernel (tests, or engines without SIMD). */
  forceJs: false,
  /**
   * Wasm memory ceiling in 64 KiB pages (4 GiB, wasm32's limit): resident weights, workspaces and
   * scratch share it; larger problems are split by batch or rejected.
   */
  maxPages: 65536,
  /**
   * Bytes of the wasm memory resident weights leave free for workspaces and scratch; weights past
   * that stay in host memory and are copied in per product (as before resident storage existed).
   */
  residentHeadroom: 1024 * 1024 * 1024,
  /**
   * Memories (arenas) resident weights may spread over: each is one wasm32 memory of up to maxPages,
   * with its own kernel instance and worker threads.
   */
  maxArenas: 16,
  /** Products with at most this many rows against a transposed (Linear-weight) B take the GEMV path. */
  gemvMaxM: 4,
  /**
   * bf16 / FP8 weights of more than gemvLargeBytes (as f32: an LM head) stay on the GEMV up to this many
   * rows (batched decode): the GEMV streams the weight once for all rows, while the GEMM decodes and
   * packs the whole weight again for every product. Measured against the GEMM that widens as it packs
   * (bench/lm-head-ab.ts on V3-mini's head, docs/benchmarks.md, issue 13, eighth session): the GEMV
   * is 2.2x faster at 5 rows, level at 12–16 (bf16), faster to 24 (FP8), behind from 32.
   */
  gemvMaxMLarge: 16,
  /** Weights (counted as f32 bytes) past which gemvMaxMLarge applies. */
  gemvLargeBytes: 64 << 20,
  /**
   * Relaxed-SIMD multiply-add in the GEMV kernels: 'auto' uses it when a behavioural probe passes
   * (switching on Node 20's flag for it first, see enableRelaxedSimd); false forces the plain kernel.
   */
  relaxed: 'auto' as 'auto' | boolean,
  /** Scratch bytes one sgemmMany job stages at most; a longer list runs as several jobs. */
  manyJobBytes: 64 << 20,
  /**
   * Whether argmaxProduct screens a bf16 head with its 8-bit copy (head-screen.ts: the same argmax from
   * a byte a weight plus the few rows the screen cannot rule out) where the native kernels run; false
   * runs the full product (for A/Bs and tests).
   */
  screenedHead: true,
  /** Test hook: the head screen's kernel without VNNI (native/head-screen.cc's widening path) even where the CPU has it. */
  headScreenWiden: false,
  /**
   * Bench hook: called with every product sgemm / weightProduct is asked for (shape, transposes,
   * operands resident or not), so a bench can list a workload's products; null (the default) costs one test.
   */
  trace: null as ((p: TracedProduct) => void) | null,
  /**
   * Bench hook: called after every job the engine hands to its workers (and every collection of the
   * background products), so a bench can see what each job met; null (the default) costs one test per job.
   */
  jobTrace: null as ((j: TracedJob) => void) | null,
};

/** One threaded job (or background collection) as the job-trace hook sees it. */
export interface TracedJob {
  what: string;
  /** multiply-adds (products; 0 for other jobs) */
  work: number;
  tasks: number;
  /** tasks the calling thread ran itself (the rest ran on workers) */
  callerTasks: number;
  /** a worker was inside a background product when the job started */
  backgroundBusy: boolean;
  /** a worker was asleep (past its spin) when the job started: it pays a wake-up */
  workersAsleep: boolean;
  /**
   * ms from the job's start until the caller, claiming its next task, first found one claimed by a worker
   * (or ran out of tasks to claim, if a worker ran some); -1: the workers ran none (background collection: -1)
   */
  joinMs: number;
  /** background products posted since their last collection (queued, running or done) when the job started */
  backgroundPosted: number;
  /** ms from the job's start to the caller running out of tasks to claim, and from then to the job's end */
  workMs: number;
  waitMs: number;
  /** ms of workMs the caller spent between claiming a task and starting it: a gate's waits (and the claims) */
  gateMs: number;
}

/** One product as the trace hook sees it. */
export interface TracedProduct {
  entry: 'sgemm' | 'weightProduct';
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  batch: number;
  /** operands in an engine's memory (read / written in place) */
  resident: { a: boolean; b: boolean; c: boolean };
}

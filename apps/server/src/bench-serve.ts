// The serving benchmark: Poisson arrivals of streaming completion requests against any
// OpenAI-compatible server (dsv3-serve, vLLM, llama.cpp's llama-server), measuring time to first token,
// time per output token, inter-token latency, end-to-end latency and throughput.
import { Rng } from '@dsv3/core';

export interface BenchOptions {
  /** server base URL, e.g. http://127.0.0.1:8000 */
  url: string;
  model: string;
  requests: number;
  /** mean arrivals per second (Poisson); Infinity sends all at once */
  rate: number;
  inputLen: number;
  outputLen: number;
  /** most requests in flight at once (default: unbounded) */
  concurrency?: number;
  apiKey?: string;
  seed?: number;
  /** prompt token ids are drawn from [10, vocab) (default 1000) */
  vocab?: number;
}

export interface Percentiles {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

export interface BenchResult {
  completed: number;
  failed: number;
  errors: string[];
  durationS: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  inputTokens: number;
  outputTokens: number;
  ttftMs: Percentiles;
  tpotMs: Percentiles;
  itlMs: Percentiles;
  e2eMs: Percentiles;
}

interface One {
  ok: boolean;
  error?: string;
  ttft: number;
  itl: number[];
  e2e: number;
  outputTokens: number;
  inputTokens: number;
}

export function percentiles(xs: readonly number[]): Percentiles {
  if (!xs.length) return { mean: NaN, p50: NaN, p90: NaN, p99: NaN };
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99) };
}

async function oneRequest(o: BenchOptions, prompt: number[]): Promise<One> {
  const t0 = performance.now();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (o.apiKey) headers.authorization = `Bearer ${o.apiKey}`;
  const res = await fetch(`${o.url.replace(/\/$/, '')}/v1/completions`, {
    method: 'POST',
    headers,
    body: JSON.stringify({
      model: o.model,
      prompt,
      max_tokens: o.outputLen,
      temperature: 0,
      stream: true,
      ignore_eos: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body)
    return {
      ok: false,
      error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`,
      ttft: 0,
      itl: [],
      e2e: 0,
      outputTokens: 0,
      inputTokens: 0,
    };
  let ttft = -1;
  let last = 0;
  const itl: number[] = [];
  let chunks = 0;
  const usage: { prompt_tokens?: number; completion_tokens?: number } = {};
  let buf = '';
  const dec = new TextDecoder();
  const reader = res.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]') continue;
      const ev = JSON.parse(data) as {
        choices?: { text?: string }[];
        usage?: typeof usage;
        error?: { message: string };
      };
      if (ev.error)
        return { ok: false, error: ev.error.message, ttft: 0, itl: [], e2e: 0, outputTokens: 0, inputTokens: 0 };
      if (ev.usage) Object.assign(usage, ev.usage);
      if (!ev.choices?.length) continue;
      const now = performance.now();
      if (ttft < 0) ttft = now - t0;
      else itl.push(now - last);
      last = now;
      chunks++;
    }
  }
  const e2e = performance.now() - t0;
  return {
    ok: ttft >= 0,
    ...(ttft < 0 && { error: 'no tokens streamed' }),
    ttft,
    itl,
    e2e,
    outputTokens: usage.completion_tokens ?? chunks,
    inputTokens: usage.prompt_tokens ?? prompt.length,
  };
}

/** Runs the benchmark; requests arrive as a Poisson process of `rate` per second. */
export async function runBenchmark(o: BenchOptions): Promise<BenchResult> {
  const rng = new Rng(o.seed ?? 0);
  const vocab = o.vocab ?? 1000;
  const prompts = Array.from({ length: o.requests }, () =>
    Array.from({ length: o.inputLen }, () => rng.integer(10, vocab)),
  );
  const limit = o.concurrency ?? Infinity;
  let inFlight = 0;
  const waiters: (() => void)[] = [];
  const acquire = async (): Promise<void> => {
    while (inFlight >= limit) await new Promise<void>((r) => waiters.push(r));
    inFlight++;
  };
  const release = (): void => {
    inFlight--;
    waiters.shift()?.();
  };
  const t0 = performance.now();
  const jobs: Promise<One>[] = [];
  for (const p of prompts) {
    await acquire();
    jobs.push(
      oneRequest(o, p)
        .catch(
          (e: unknown): One => ({
            ok: false,
            error: String(e),
            ttft: 0,
            itl: [],
            e2e: 0,
            outputTokens: 0,
            inputTokens: 0,
          }),
        )
        .finally(release),
    );
    if (Number.isFinite(o.rate))
      await new Promise((r) => setTimeout(r, (-Math.log(1 - rng.uniform()) / o.rate) * 1000));
  }
  const all = await Promise.all(jobs);
  const durationS = (performance.now() - t0) / 1000;
  const ok = all.filter((r) => r.ok);
  const outputTokens = ok.reduce((s, r) => s + r.outputTokens, 0);
  const inputTokens = ok.reduce((s, r) => s + r.inputTokens, 0);
  return {
    completed: ok.length,
    failed: all.length - ok.length,
    errors: [...new Set(all.filter((r) => !r.ok).map((r) => r.error!))].slice(0, 5),
    durationS,
    requestThroughput: ok.length / durationS,
    outputThroughput: outputTokens / durationS,
    totalTokenThroughput: (inputTokens + outputTokens) / durationS,
    inputTokens,
    outputTokens,
    ttftMs: percentiles(ok.map((r) => r.ttft)),
    tpotMs: percentiles(ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2e - r.ttft) / (r.outputTokens - 1))),
    itlMs: percentiles(ok.flatMap((r) => r.itl)),
    e2eMs: percentiles(ok.map((r) => r.e2e)),
  };
}

/** The result as a plain-text table. */
export function formatTable(r: BenchResult): string {
  const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(x >= 100 ? 0 : 2) : '-');
  const rows: [string, string][] = [
    ['completed / failed', `${r.completed} / ${r.failed}`],
    ['duration (s)', f(r.durationS)],
    ['request throughput (req/s)', f(r.requestThroughput)],
    ['output throughput (tok/s)', f(r.outputThroughput)],
    ['total token throughput (tok/s)', f(r.totalTokenThroughput)],
  ];
  for (const [name, p] of [
    ['TTFT', r.ttftMs],
    ['TPOT', r.tpotMs],
    ['ITL', r.itlMs],
    ['E2E', r.e2eMs],
  ] as const) {
    rows.push([`${name} mean / p50 / p90 / p99 (ms)`, `${f(p.mean)} / ${f(p.p50)} / ${f(p.p90)} / ${f(p.p99)}`]);
  }
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
}

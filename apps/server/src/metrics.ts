// Prometheus metrics (prom-client) under vLLM's names with a dsv3: prefix. Gauges read the engine's
// state when scraped; the engine runs in this thread, so a scrape always sees it between two steps.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AsyncEngine, EngineCoreStats } from '@dsv3/serve';

const latencyBuckets = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
];

export class ServerMetrics {
  readonly registry = new Registry();
  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly e2e: Histogram;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly requests: Counter<'finished_reason'>;
  readonly rejected: Counter<'reason'>;
  readonly specDraft: Counter;
  readonly specAccepted: Counter<'position'>;

  constructor(engine: () => AsyncEngine | null, modelName: string) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    // process_resident_memory_bytes, event-loop lag, heap: what an operator watches besides the engine
    collectDefaultMetrics({ register: this.registry });
    const h = (name: string, help: string): Histogram =>
      new Histogram({ name, help, buckets: latencyBuckets, registers });
    this.ttft = h('dsv3:time_to_first_token_seconds', 'Time from request arrival to its first token');
    this.itl = h('dsv3:inter_token_latency_seconds', 'Time between two tokens of a request');
    this.e2e = h('dsv3:e2e_request_latency_seconds', 'Time from request arrival to its last token');
    this.promptTokens = new Counter({
      name: 'dsv3:prompt_tokens_total',
      help: 'Prompt tokens of finished requests',
      registers,
    });
    this.generationTokens = new Counter({ name: 'dsv3:generation_tokens_total', help: 'Generated tokens', registers });
    this.requests = new Counter({
      name: 'dsv3:request_success_total',
      help: 'Finished requests by finish reason',
      labelNames: ['finished_reason'],
      registers,
    });
    this.rejected = new Counter({
      name: 'dsv3:request_rejected_total',
      help: 'Requests refused before running',
      labelNames: ['reason'],
      registers,
    });
    // the engine counts drafts; a scrape adds what it counted since the last one
    const seen = { drafted: [] as number[], accepted: [] as number[] };
    const delta = (kind: 'drafted' | 'accepted', j: number, now: number): number => {
      const d = now - (seen[kind][j] ?? 0);
      seen[kind][j] = now;
      return d;
    };
    const spec = (): { drafted: number[]; accepted: number[] } =>
      engine()?.core.stats().speculative ?? { drafted: [], accepted: [] };
    this.specDraft = new Counter({
      name: 'dsv3:spec_decode_num_draft_tokens_total',
      help: 'Speculative draft tokens proposed',
      registers,
      collect() {
        spec().drafted.forEach((n, j) => this.inc(delta('drafted', j, n)));
      },
    });
    this.specAccepted = new Counter({
      name: 'dsv3:spec_decode_num_accepted_tokens_per_pos_total',
      help: 'Accepted speculative tokens per draft position',
      labelNames: ['position'],
      registers,
      collect() {
        const s = spec();
        s.drafted.forEach((_, j) => this.inc({ position: String(j) }, delta('accepted', j, s.accepted[j] ?? 0)));
      },
    });
    type Numeric = {
      [K in keyof EngineCoreStats]: EngineCoreStats[K] extends number ? K : never;
    }[keyof EngineCoreStats];
    const stat = (k: Numeric): number => engine()?.core.stats()[k] ?? 0;
    const g = (name: string, help: string, read: () => number): Gauge =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    g('dsv3:num_requests_running', 'Requests in the running batch', () => stat('running'));
    g('dsv3:num_requests_waiting', 'Requests waiting for a running slot', () => stat('waiting'));
    g('dsv3:kv_cache_usage_perc', 'Fraction of latent-cache blocks held by requests (0..1)', () => stat('kvUsage'));
    g('dsv3:num_preemptions', 'Requests preempted (recomputed later) so far', () => stat('preemptions'));
    g('dsv3:prefix_cache_queries', 'Prompt tokens looked up in the prefix cache', () => stat('prefixQueries'));
    g('dsv3:prefix_cache_hits', 'Prompt tokens found in the prefix cache', () => stat('prefixHits'));
    g(
      'dsv3:prefix_cache_hit_rate',
      'prefix_cache_hits / prefix_cache_queries',
      () => stat('prefixHits') / Math.max(1, stat('prefixQueries')),
    );
  }
}

/** Per-request timing that feeds the latency histograms. */
export class RequestTimer {
  private readonly start = performance.now();
  private last = 0;
  private first = true;

  constructor(private readonly m: ServerMetrics) {}

  /** Records the arrival of `tokens` new tokens (the first call gives TTFT, later ones ITL). */
  tokens(n: number): void {
    if (n <= 0) return;
    const now = performance.now();
    if (this.first) {
      this.m.ttft.observe((now - this.start) / 1000);
      this.first = false;
    } else {
      // several tokens in one step (speculative decoding) share the gap
      const gap = (now - this.last) / 1000 / n;
      for (let i = 0; i < n; i++) this.m.itl.observe(gap);
    }
    this.last = now;
    this.m.generationTokens.inc(n);
  }

  finish(reason: string, promptTokens: number): void {
    this.m.e2e.observe((performance.now() - this.start) / 1000);
    this.m.requests.inc({ finished_reason: reason });
    this.m.promptTokens.inc(promptTokens);
  }
}

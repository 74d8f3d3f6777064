// OpenAI's response shapes: completion and chat choices, streamed deltas, logprobs and usage.
import type { GenerationChunk, SamplingParams, TextLogprob, Usage } from '@dsv3/serve';

/** One engine request behind a response choice. */
export interface Job {
  index: number;
  promptIds: number[];
  params: SamplingParams;
}

export interface Format {
  model: string;
  idPrefix: string;
  object: string;
  chunkObject: string;
  /** A streamed choice delta. */
  delta(index: number, c: GenerationChunk, first: boolean): Record<string, unknown>;
  /** The whole choice of a non-streamed response. */
  choice(index: number, text: string, logprobs: TextLogprob[], finish: string): Record<string, unknown>;
}

function completionLogprobs(lps: readonly TextLogprob[], offset0 = 0): Record<string, unknown> {
  let off = offset0;
  const text_offset = lps.map((l) => {
    const at = off;
    off += l.text.length;
    return at;
  });
  return {
    tokens: lps.map((l) => l.text),
    token_logprobs: lps.map((l) => l.logprob),
    // keyed by text as OpenAI does; tokens of equal text keep the likeliest
    top_logprobs: lps.map((l) => {
      const top: Record<string, number> = {};
      for (const t of l.top) if (!(t.text in top)) top[t.text] = t.logprob;
      return top;
    }),
    text_offset,
  };
}

function chatLogprobs(lps: readonly TextLogprob[]): Record<string, unknown> {
  const bytes = (s: string): number[] => [...Buffer.from(s, 'utf8')];
  return {
    content: lps.map((l) => ({
      token: l.text,
      logprob: l.logprob,
      bytes: bytes(l.text),
      top_logprobs: l.top.map((t) => ({ token: t.text, logprob: t.logprob, bytes: bytes(t.text) })),
    })),
  };
}

export function completionFormat(model: string): Format {
  return {
    model,
    idPrefix: 'cmpl',
    object: 'text_completion',
    chunkObject: 'text_completion',
    delta: (index, c) => ({
      index,
      text: c.text,
      logprobs: c.logprobs ? completionLogprobs(c.logprobs) : null,
      finish_reason: c.finishReason === 'abort' ? 'stop' : c.finishReason,
    }),
    choice: (index, text, lps, finish) => ({
      index,
      text,
      logprobs: lps.length ? completionLogprobs(lps) : null,
      finish_reason: finish,
    }),
  };
}

export function chatFormat(model: string, wantLogprobs: boolean): Format {
  return {
    model,
    idPrefix: 'chatcmpl',
    object: 'chat.completion',
    chunkObject: 'chat.completion.chunk',
    delta: (index, c, first) => ({
      index,
      delta: first ? { role: 'assistant', content: c.text } : { content: c.text },
      logprobs: wantLogprobs && c.logprobs ? chatLogprobs(c.logprobs) : null,
      finish_reason: c.finishReason === 'abort' ? 'stop' : c.finishReason,
    }),
    choice: (index, text, lps, finish) => ({
      index,
      message: { role: 'assistant', content: text },
      logprobs: wantLogprobs ? chatLogprobs(lps) : null,
      finish_reason: finish,
    }),
  };
}

function usageBody(u: Usage[]): Record<string, unknown> {
  const prompt = u.reduce((s, x, i) => s + (i === 0 || x.promptTokens ? x.promptTokens : 0), 0);
  const completion = u.reduce((s, x) => s + x.completionTokens, 0);
  const cached = u.reduce((s, x) => s + x.cachedTokens, 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached },
  };
}

/** Usage of a response: each distinct prompt counted once (n choices share theirs). */
export function usageOf(jobs: readonly Job[], usage: (Usage | undefined)[]): Record<string, unknown> {
  const seen = new Set<number[]>();
  const list = jobs.map((j, i) => {
    const u = usage[i] ?? { promptTokens: j.promptIds.length, completionTokens: 0, cachedTokens: 0 };
    const first = !seen.has(j.promptIds);
    seen.add(j.promptIds);
    return { ...u, promptTokens: first ? j.promptIds.length : 0 };
  });
  return usageBody(list);
}

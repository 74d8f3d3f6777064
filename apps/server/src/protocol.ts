// OpenAI request bodies (completions and chat completions) as zod schemas, and their translation to the
// engine's sampling parameters. Unknown fields are refused by name, not silently ignored.
import { z } from 'zod';
import { defaultSamplingParams, type SamplingParams } from '@dsv3/serve';

const num = z.number();
const int = z.number().int();
/** Fields OpenAI clients may send that change nothing here. */
const ignored = {
  user: z.string().optional(),
  metadata: z.record(z.string(), z.string()).optional(),
  store: z.boolean().optional(),
  service_tier: z.string().optional(),
};

const sampling = {
  model: z.string().min(1),
  temperature: num.min(0, 'temperature must be >= 0').max(100).nullish(),
  top_p: num.gt(0, 'top_p must be in (0, 1]').max(1, 'top_p must be in (0, 1]').nullish(),
  top_k: int.min(-1, 'top_k must be -1 (off) or >= 0').nullish(),
  min_p: num.min(0).max(1).nullish(),
  n: int.min(1).max(16, 'n must be at most 16').nullish(),
  stream: z.boolean().nullish(),
  stream_options: z
    .strictObject({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() })
    .nullish(),
  stop: z.union([z.string(), z.array(z.string().min(1)).max(16)]).nullish(),
  stop_token_ids: z.array(int.min(0)).max(64).nullish(),
  seed: int
    .min(-(2 ** 53) + 1)
    .max(2 ** 53 - 1)
    .nullish(),
  presence_penalty: num.min(-2).max(2).nullish(),
  frequency_penalty: num.min(-2).max(2).nullish(),
  repetition_penalty: num.gt(0).max(100).nullish(),
  logit_bias: z
    .record(z.string().regex(/^\d+$/, 'logit_bias keys must be token ids'), num.min(-100).max(100))
    .nullish(),
  ignore_eos: z.boolean().nullish(),
  ...ignored,
};

const tokenIds = z.array(int.min(0)).min(1, 'a prompt of token ids must not be empty');

export const completionRequest = z.strictObject({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string()).min(1).max(64), tokenIds, z.array(tokenIds).min(1).max(64)]),
  max_tokens: int.min(1, 'max_tokens must be >= 1').nullish(),
  logprobs: int.min(0).max(20).nullish(),
  echo: z.literal(false).nullish(),
  best_of: int.min(1).max(1, 'best_of other than 1 is not supported').nullish(),
  suffix: z.null().optional(),
});
export type CompletionRequest = z.infer<typeof completionRequest>;

const contentPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const message = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(contentPart), z.null()]),
  name: z.string().optional(),
});

export const chatRequest = z.strictObject({
  ...sampling,
  messages: z.array(message).min(1, 'messages must not be empty'),
  max_tokens: int.min(1, 'max_tokens must be >= 1').nullish(),
  max_completion_tokens: int.min(1, 'max_completion_tokens must be >= 1').nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: int.min(0).max(20).nullish(),
  response_format: z.strictObject({ type: z.literal('text') }).nullish(),
  add_generation_prompt: z.boolean().nullish(),
});
export type ChatRequest = z.infer<typeof chatRequest>;
export type ChatRequestMessage = z.infer<typeof message>;

/** "field: message" for the first issue of a failed parse (what the 400 body says). */
export function describeZodError(e: z.ZodError): { message: string; param: string | null } {
  const issue = e.issues[0]!;
  const param = issue.path.length ? issue.path.join('.') : null;
  if (issue.code === 'unrecognized_keys')
    return { message: `unknown field(s): ${issue.keys.join(', ')}`, param: issue.keys[0] ?? null };
  return { message: param ? `${param}: ${issue.message}` : issue.message, param };
}

type Common = Pick<
  CompletionRequest,
  | 'temperature'
  | 'top_p'
  | 'top_k'
  | 'min_p'
  | 'seed'
  | 'presence_penalty'
  | 'frequency_penalty'
  | 'repetition_penalty'
  | 'logit_bias'
  | 'stop_token_ids'
  | 'ignore_eos'
>;

/** The engine's sampling parameters for one of the n choices (choice i gets seed + i). */
export function toSamplingParams(
  r: Common,
  maxTokens: number,
  logprobs: number | null,
  choice: number,
): SamplingParams {
  const bias = new Map<number, number>();
  for (const [k, v] of Object.entries(r.logit_bias ?? {})) bias.set(Number(k), v);
  return {
    ...defaultSamplingParams,
    temperature: r.temperature ?? 1,
    topP: r.top_p ?? 1,
    topK: r.top_k === -1 || r.top_k == null ? 0 : r.top_k,
    minP: r.min_p ?? 0,
    ...(r.seed != null && { seed: r.seed + choice }),
    presencePenalty: r.presence_penalty ?? 0,
    frequencyPenalty: r.frequency_penalty ?? 0,
    repetitionPenalty: r.repetition_penalty ?? 1,
    logitBias: bias,
    maxTokens,
    stopTokenIds: r.stop_token_ids ?? [],
    ignoreEos: r.ignore_eos ?? false,
    logprobs,
  };
}

export function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return typeof stop === 'string' ? (stop.length ? [stop] : []) : stop;
}

/** Message content as text (text parts joined). */
export function messageText(m: ChatRequestMessage): string {
  if (m.content === null) return '';
  return typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
}

// Acceptance of a checkpoint's MTP drafts when decoding with them (greedy and sampled):
//   npx tsx --conditions=@dsv3/source bench/mtp-acceptance.ts CHECKPOINT_DIR
import { generate, loadModel, loadTokenizer, type DeepseekV3ForCausalLM, type Tokenizer } from '@dsv3/model';

const PROMPTS = ['The jury said', 'In the morning, the', 'He was not', 'It is a'];

export async function mtpAcceptance(model: DeepseekV3ForCausalLM, tok: Tokenizer): Promise<string> {
  model.eval();
  const prompts = PROMPTS.map((p) => tok.encode(p));
  const lines: string[] = [];
  for (const temperature of [0, 0.8]) {
    const g = await generate(model, prompts, {
      maxNewTokens: 64,
      temperature,
      seed: 1,
      mtpDraftTokens: 1,
      stopTokens: [],
    });
    const s = g.stats!;
    const sample = JSON.stringify(tok.decode(g.newTokens[0]!, { skipSpecialTokens: true }).slice(0, 60));
    lines.push(
      `| ${temperature === 0 ? 'greedy' : `sampled, T = ${temperature}`} | ${(s.rate(0) * 100).toFixed(1)}% | ${s.tokensPerStep.toFixed(2)} | ${sample} |`,
    );
  }
  return `| decoding (${PROMPTS.length} prompts x 64 tokens, 1 MTP draft per step) | drafts accepted | tokens per main-model forward | continuation of "${PROMPTS[0]}" |\n|---|---|---|---|\n${lines.join('\n')}`;
}

if (process.argv[1]?.endsWith('mtp-acceptance.ts')) {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: mtp-acceptance.ts CHECKPOINT_DIR');
  console.log(await mtpAcceptance(loadModel(dir), await loadTokenizer(dir)));
}

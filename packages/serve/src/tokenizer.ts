// The tokenizer the engine front end needs: @dsv3/model's Tokenizer (loaded from a model directory
// with loadTokenizer) satisfies it structurally.
export interface ServingTokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly chatTemplate: string | null;
  readonly specialTokens: ReadonlyMap<string, number>;
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
}

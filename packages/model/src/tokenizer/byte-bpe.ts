// GPT-2's byte ↔ printable-character table, used by Hugging Face's ByteLevel pre-tokenizer: every byte
// maps to one visible code point so a byte string becomes a string of vocabulary symbols.

function buildByteChars(): string[] {
  const chars: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return chars;
}

/** BYTE_CHARS[b] is the vocabulary symbol of byte b. */
export const BYTE_CHARS: readonly string[] = buildByteChars();

// Copies a stream to another line by line, each line prefixed (a rank's output: "[rank 3] ...").
import type { Readable } from 'node:stream';

export function prefixLines(from: Readable, to: NodeJS.WritableStream, prefix: string): void {
  let pending = '';
  from.setEncoding('utf8');
  from.on('data', (chunk: string) => {
    const lines = (pending + chunk).split('\n');
    pending = lines.pop()!;
    if (lines.length) to.write(lines.map((l) => `${prefix + l}\n`).join(''));
  });
  from.on('end', () => {
    if (pending) to.write(`${prefix + pending}\n`);
    pending = '';
  });
}

// A rank of a parallel dsv3-train job: runs the CLI with the arguments it was given. With FAIL_RANK set,
// that rank dies (exit 3) at its FAIL_AT-th world all-reduce, i.e. in the middle of a training step.
import { ProcessGroup, launchEnv, reportResult } from '@dsv3/parallel';
import { main } from '../../src/cli.js';

const failRank = process.env.FAIL_RANK;
if (failRank !== undefined && launchEnv().rank === Number(failRank)) {
  const at = Number(process.env.FAIL_AT);
  const orig = ProcessGroup.prototype.allReduce;
  let calls = 0;
  ProcessGroup.prototype.allReduce = function (this: ProcessGroup, ...args: Parameters<typeof orig>) {
    if (this.id === 0 && ++calls === at) process.exit(3);
    return orig.apply(this, args);
  } as typeof orig;
}
let code = 1;
let error = '';
const err = process.stderr.write.bind(process.stderr);
process.stderr.write = ((s: string | Uint8Array) => {
  error += String(s);
  return err(s);
}) as typeof process.stderr.write;
try {
  code = await main(process.argv.slice(2));
} catch (e) {
  error += (e as Error).message;
}
reportResult({ code, error });

// Progress of a run: a cli-progress bar with ETA in a terminal, plain log lines otherwise.
import { SingleBar } from 'cli-progress';
import type { EvalRecord, StepRecord, TrainerHooks } from '@dsv3/train';

const fmt = (v: number | null, digits = 3): string => (v === null || !Number.isFinite(v) ? '-' : v.toFixed(digits));

export function progressHooks(opts: {
  tty: boolean;
  logEvery: number;
  write?: (line: string) => void;
}): TrainerHooks & { stop(): void } {
  const write = opts.write ?? ((l: string) => process.stderr.write(`${l}\n`));
  let bar: SingleBar | null = null;
  let lastEval: number | null = null;
  return {
    onStart(info) {
      write(
        `run ${info.runDir}: ${(info.parameters / 1e6).toFixed(2)}M parameters (${(info.activated / 1e6).toFixed(2)}M activated per token), ` +
          `steps ${info.startStep} → ${info.totalSteps}${info.resumedFrom ? `, resumed from ${info.resumedFrom}` : ''}`,
      );
      if (opts.tty) {
        bar = new SingleBar({
          format:
            'step {value}/{total} |{bar}| loss {loss} eval {evalLoss} lr {lr} {tps} tok/s MFU {mfu} MaxVio {maxVio} | ETA {eta_formatted}',
          barsize: 24,
          etaBuffer: 20,
          hideCursor: true,
          stream: process.stderr,
        });
        bar.start(info.totalSteps, info.startStep, {
          loss: '-',
          evalLoss: '-',
          lr: '-',
          tps: '-',
          mfu: '-',
          maxVio: '-',
        });
      }
    },
    onStep(r: StepRecord, total: number) {
      const payload = {
        loss: fmt(r.mainLoss),
        evalLoss: fmt(lastEval),
        lr: r.lr.toExponential(2),
        tps: r.tokensPerSec.toFixed(0),
        mfu: `${(r.mfu * 100).toFixed(2)}%`,
        maxVio: fmt(r.maxVioMean, 2),
      };
      if (bar) bar.update(r.step, payload);
      else if (r.step % opts.logEvery === 0 || r.step === total) {
        write(
          `step ${r.step}/${total} loss ${payload.loss} mtp ${fmt(r.mtpLoss)} balance ${r.balanceLoss.toExponential(2)} grad-norm ${fmt(r.gradNorm)} lr ${payload.lr} ${payload.tps} tok/s MFU ${payload.mfu} MaxVio ${payload.maxVio}`,
        );
      }
    },
    onEval(r: EvalRecord) {
      lastEval = r.evalLoss;
      if (!bar) write(`eval at step ${r.step}: loss ${fmt(r.evalLoss)} over ${r.evalTokens} held-out tokens`);
    },
    onCheckpoint(dir: string) {
      if (!bar) write(`checkpoint ${dir}`);
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}

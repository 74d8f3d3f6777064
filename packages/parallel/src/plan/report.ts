// Plain-text tables of plans (what dsv3-plan prints without --json).
import type { BubbleRow, V3Reproduction } from './v3.js';
import type { ServePlan } from './serve.js';
import type { TrainPlan } from './train.js';
import { describeLayout } from './train.js';

export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const width = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string =>
    r.map((c, i) => (i === 0 ? c.padEnd(width[i]!) : c.padStart(width[i]!))).join('  ');
  return [line(cells[0]!), width.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

const gb = (x: number): string => `${(x / 1e9).toFixed(2)} GB`;
const ms = (x: number): string => `${(x * 1e3).toFixed(1)} ms`;
const s3 = (x: number): string => `${x.toFixed(3)} s`;
const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

export function formatTrainPlan(p: TrainPlan): string {
  const st = p.step;
  return [
    `layout ${describeLayout(p.layout)} on ${p.world} GPUs; ${p.chunks} micro-batches of ${p.workload.microBatch}×${p.workload.seqLen} tokens per pipeline, ${p.stages} stages`,
    table(
      ['per chunk (one stage)', 'value'],
      [
        ['forward compute F', ms(p.chunk.F)],
        ['backward-for-inputs B', ms(p.chunk.B)],
        ['backward-for-weights W', ms(p.chunk.W)],
        ['all-to-all forward', ms(p.chunk.allToAllForward)],
        ['all-to-all backward', ms(p.chunk.allToAllBackward)],
        ['pipeline send', ms(p.chunk.p2p)],
        ['cross-node copies / token / MoE layer', p.remoteCopiesPerToken.toFixed(2)],
        ['compute : all-to-all (forward, no overlap)', p.computeToCommRatio.toFixed(2)],
      ],
    ),
    table(
      ['step', 'time'],
      [
        ['total', s3(st.total)],
        ['compute', s3(st.compute)],
        ['  fixed cost of operators', s3(st.fixed)],
        ['all-to-all', s3(st.allToAll)],
        ['  hidden by overlap', s3(st.allToAllHidden)],
        ['pipeline bubble (worst rank)', s3(st.bubble)],
        ['pipeline sends (overlapped)', s3(st.pipelineP2P)],
        ['data-parallel sync', s3(st.dataParallel)],
        ['optimizer update', s3(st.optimizer)],
      ],
    ),
    table(
      ['memory per GPU', 'bytes'],
      [
        ['parameters', `${(p.memory.parameters / 1e9).toFixed(2)} B`],
        ['weights (BF16)', gb(p.memory.weights)],
        ['gradients (FP32)', gb(p.memory.gradients)],
        [`optimizer (FP32 master + BF16 moments${p.layout.zero1 ? ', ZeRO-1' : ''})`, gb(p.memory.optimizer)],
        [`activations (${p.memory.peakChunks} chunks in flight)`, gb(p.memory.activations)],
        ['total', `${gb(p.memory.total)} of ${gb(p.memory.hbm)}`],
      ],
    ),
    table(
      ['throughput', 'value'],
      [
        ['tokens/s', p.tokensPerSecond.toExponential(3)],
        ['MFU (BF16 peak)', pct(p.mfuBf16)],
        ['MFU (FP8 peak)', pct(p.mfuFp8)],
        ['GPU-hours per trillion tokens', Math.round(p.gpuHoursPerTrillionTokens).toLocaleString('en-US')],
      ],
    ),
  ].join('\n\n');
}

export function formatServePlan(p: ServePlan): string {
  const u = p.unit;
  const row = (name: string, l: ServePlan['withRedundancy']): (string | number)[] => [
    name,
    l.meanTokensPerGpu.toFixed(0),
    l.maxTokensPerGpu.toFixed(0),
    (l.maxTokensPerGpu / l.meanTokensPerGpu).toFixed(2),
    l.maxTokensPerExpert.toFixed(0),
  ];
  return [
    `${u.phase} unit: ${u.gpus} GPUs, attention TP${u.attentionTp} × DP${p.groups}, ${p.logicalExperts} experts${u.sharedAsRouted ? ' (shared one routed)' : ''} + ${u.redundantSlots} redundant = ${p.slotsPerGpu} per GPU (EPLB ${p.policy})`,
    table(
      ['expert placement', 'tokens/GPU mean', 'max', 'max/mean', 'max tokens/expert'],
      [row('EPLB with redundant experts', p.withRedundancy), row('one copy per expert', p.withoutRedundancy)],
    ),
    table(
      ['capacity and speed', 'value'],
      [
        ['latent KV per token', `${p.kvBytesPerToken} B`],
        ['KV tokens per GPU', Math.round(p.kvTokensPerGpu).toLocaleString('en-US')],
        [u.phase === 'decode' ? 'weights + KV reads' : 'compute', ms(p.localSeconds)],
        ['all-to-all (IB bandwidth)', ms(p.allToAllSeconds)],
        ['step (the two overlapped)', ms(p.stepSeconds)],
        ['tokens/s per GPU', p.tokensPerSecondPerGpu.toFixed(0)],
      ],
    ),
  ].join('\n\n');
}

export function formatBubbles(rows: BubbleRow[]): string {
  return table(
    ['schedule', 'PP', 'chunks', 'simulated bubble', 'formula', 'peak activations', 'param copies'],
    rows.map((r) => [r.kind, r.pp, r.chunks, r.simulated, r.formula, r.peakActivations, r.parameterCopies]),
  );
}

export function formatV3(r: V3Reproduction): string {
  const b = (x: number): string => `${(x / 1e9).toFixed(2)}B`;
  return [
    table(
      ['quantity', 'dsv3-plan', 'published', 'assumptions'],
      [
        ['parameters (main model)', b(r.parameters.total), '671B', 'HF config of DeepSeek-V3, MTP module excluded'],
        ['activated per token', b(r.parameters.activated), '37B', 'embedding + head counted'],
        ['latent KV bytes / token', r.kvBytesPerToken, '70,272', '(512 + 64) × 61 layers, BF16'],
        [
          'compute : all-to-all, no overlap',
          `${r.computeToComm.ratio.toFixed(2)} : 1`,
          '≈ 1 : 1',
          `H800, FP8 GEMMs at ${pct(r.computeToComm.efficiency)} of peak, IB 50 GB/s, EP64 over 8 nodes, 4-node-limited routing`,
        ],
        [
          'IB copies / token / layer, unrestricted',
          r.routing.unrestricted.naiveRemoteCopies.toFixed(2),
          '',
          'one copy per remote expert (8 experts, 8 nodes)',
        ],
        [
          'IB copies / token / layer, 4-node-limited',
          r.routing.nodeLimited.remoteCopies.toFixed(2),
          '',
          'one copy per remote node, then NVLink',
        ],
        [
          '  ratio',
          r.routing.ratioVsPerExpertCopies.toFixed(3),
          '≈ 0.5',
          `vs unrestricted with per-node dedup: ${r.routing.ratioVsUnrestrictedHierarchical.toFixed(3)}`,
        ],
        [
          'GPU-hours per trillion tokens',
          Math.round(r.gpuHours.plan.gpuHoursPerTrillionTokens).toLocaleString('en-US'),
          '180K',
          `FP8 GEMMs at ${pct(r.gpuHours.efficiency)} of peak → MFU ${pct(r.gpuHours.mfuBf16)} of BF16 peak (${pct(r.gpuHours.mfuFp8)} of FP8)`,
        ],
        ['prefill unit experts per GPU', r.prefill.slotsPerGpu, '8 + 1 redundant', '32 GPUs, 256 + 32 redundant'],
        [
          'decode unit experts per GPU',
          r.decode.slotsPerGpu,
          '1',
          '320 GPUs, 256 routed + shared (as routed) + 63 redundant',
        ],
        [
          'decode max tokens per expert',
          r.decode.withRedundancy.maxTokensPerExpert.toFixed(0),
          '≤ 256 usually',
          `${r.decode.unit.tokensPerGroup} sequences per attention group, log-normal (σ 0.6) expert popularity`,
        ],
      ],
    ),
    formatBubbles(r.bubbles),
  ].join('\n\n');
}

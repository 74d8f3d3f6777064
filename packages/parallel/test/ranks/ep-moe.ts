// Run by every rank of a local job: expert-parallel MoE against the same layer in one process.
// Each rank routes its own (ragged) tokens; the reference runs every rank's tokens through an
// identical single-process layer. Reports the worst errors; the test file holds the tolerances.
import { Rng, cast, fromRaw, mul, noGrad, sum, type Tensor } from '@dsv3/core';
import { randomTensor64, relativeError } from '@dsv3/core/testing';
import { dequantizeActivation, quantizeActivation } from '@dsv3/fp8';
import { MoE, runMoE } from '@dsv3/moe';
import {
  allToAllRows,
  backwardAsync,
  contiguousPlacement,
  createLayoutGroups,
  eplbPlacement,
  expertParallel,
  hierarchicalDispatch,
  initProcessGroup,
  ParallelLayout,
  reportResult,
  type ExpertParallelOptions,
  type ExpertPlacement,
  type WirePrecision,
} from '@dsv3/parallel';

const world = await initProcessGroup({ timeoutMs: 120_000 });
const P = world.size;
// The ranks as 2 nodes of P/2: the EP group and its two hops (intra-node, inter-node).
const groups = createLayoutGroups(world, new ParallelLayout({ ep: P }, { ranksPerNode: P / 2 }));
const pg = groups.ep;
const hierarchical = { intra: groups.epIntra, inter: groups.epInter };
const H = 16;
const out: Record<string, number | number[]> = {};

const cfg = (nGroup: number, topkGroup: number) => ({
  hidden_size: H,
  n_routed_experts: 8,
  num_experts_per_tok: 3,
  n_group: nGroup,
  topk_group: topkGroup,
  norm_topk_prob: true,
  routed_scaling_factor: 2.5,
  scoring_func: 'sigmoid',
  topk_method: 'noaux_tc',
  n_shared_experts: 1,
  moe_intermediate_size: 8,
  hidden_act: 'silu',
});
const tokensOf = (r: number) => 5 + 3 * r; // ragged: each rank has its own count
const inputOf = (r: number, dtype: 'f64' | 'f32') => {
  const x = randomTensor64([tokensOf(r), H], 500 + r, -2, 2);
  return dtype === 'f64' ? x : noGrad(() => cast(x, 'f32'));
};
// A fixed random cotangent so every output element matters.
const cotangent = (r: number, dtype: 'f64' | 'f32') => {
  const c = randomTensor64([tokensOf(r), H], 900 + r);
  return dtype === 'f64' ? c : noGrad(() => cast(c, 'f32'));
};

async function allReduced(t: Tensor | null, like: Tensor): Promise<Float64Array> {
  const a = Float64Array.from((t ?? like.zerosLike()).dataSync());
  return pg.allReduce(a).wait();
}

// 1. Dispatch then combine (reverse splits, unit weights) returns every row: exactly, or rounded as the wire says.
{
  const rng = new Rng(77 + pg.rank);
  const N = 7 + pg.rank;
  const xd = Float32Array.from({ length: N * 256 }, () => (rng.uniform() - 0.5) * 8);
  const x = fromRaw('f32', [N, 256], xd);
  const splits = Array.from({ length: P }, (_, j) => (j < P - 1 ? Math.floor(N / P) + (j % 2) : 0));
  splits[P - 1] = N - splits.reduce((a, b) => a + b, 0);
  for (const wire of ['native', 'bf16', 'fp8'] as WirePrecision[]) {
    const there = await allToAllRows(pg, x, { sendSplits: splits, wire });
    const back = await allToAllRows(pg, there.rows, { sendSplits: there.recvSplits, recvSplits: splits });
    const expected =
      wire === 'native'
        ? xd
        : wire === 'bf16'
          ? noGrad(() => cast(cast(x, 'bf16'), 'f32')).dataSync()
          : (() => {
              const q = quantizeActivation(xd, [N, 256]);
              return dequantizeActivation(q.q, q.scales, [N, 256]);
            })();
    const got = back.rows.dataSync();
    let diff = 0;
    for (let i = 0; i < got.length; i++) diff = Math.max(diff, Math.abs(got[i]! - expected[i]!));
    out[`roundTrip.${wire}`] = diff;
  }
}

// 2. Forward and backward equal one process (f64), for contiguous and EPLB placements.
async function equality(
  name: string,
  placementOf: (moe: MoE) => ExpertPlacement | undefined,
  opts: ExpertParallelOptions = {},
): Promise<Tensor> {
  const ep = new MoE(cfg(4, 2), { dtype: 'f64', gateDType: 'f64', seed: 11 });
  const handle = expertParallel(ep, pg, { placement: placementOf(ep), ...opts });
  const x = inputOf(pg.rank, 'f64').requireGrad();
  const y = await runMoE(ep, x);
  await backwardAsync(sum(mul(y, cotangent(pg.rank, 'f64'))));
  const ref = new MoE(cfg(4, 2), { dtype: 'f64', gateDType: 'f64', seed: 11 });
  let yRef: Tensor | null = null;
  let gxRef: Tensor | null = null;
  for (let r = 0; r < P; r++) {
    const xr = inputOf(r, 'f64').requireGrad();
    const yr = ref.forward(xr);
    sum(mul(yr, cotangent(r, 'f64'))).backward();
    if (r === pg.rank) [yRef, gxRef] = [yr, xr.grad];
  }
  out[`${name}.output`] = relativeError(y.dataSync(), yRef!.dataSync());
  out[`${name}.inputGrad`] = relativeError(x.grad!.dataSync(), gxRef!.dataSync());
  let worst = 0;
  const refParams = ref.namedParameters();
  for (const [i, [, p]] of ep.namedParameters().entries()) {
    const g = await allReduced(p.grad, p.value);
    worst = Math.max(worst, relativeError(g, refParams[i]![1].grad!.dataSync()));
  }
  out[`${name}.paramGrads`] = worst;
  out[`${name}.rowsTo`] = Array.from(handle.stats.rowsTo);
  return y;
}
await equality('contiguous', () => contiguousPlacement(8, P));
await equality('eplb', () => eplbPlacement([9, 1, 1, 5, 1, 1, 7, 2], P, { redundant: P }));
await equality('noOverlap', () => undefined, { overlap: false });
// Two hops (across nodes to the same local rank, then within the node) against one process and the flat path.
const flatY = await equality('flat', () => undefined);
const hierY = await equality('hierarchical', () => undefined, { hierarchical });
out['hierarchical.vsFlat'] = relativeError(hierY.dataSync(), flatY.dataSync());

// 2b. The two-hop dispatch then combine returns every (token, expert) pair's row exactly.
{
  const T = tokensOf(pg.rank);
  const x = inputOf(pg.rank, 'f64');
  const rng = new Rng(31 + pg.rank);
  const k = 3;
  const dest = Array.from({ length: T * k }, () => Math.floor(rng.uniform() * P));
  const pairs = Int32Array.from(
    dest.map((d, p) => [d, p] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]),
    ([, p]) => p,
  );
  const splits = Array.from({ length: P }, (_, d) => dest.filter((x) => x === d).length);
  const experts = Int32Array.from(pairs, (p) => 2 * dest[p]!); // expert 2d lives on rank d
  const traffic = new Float64Array(P);
  const d = await hierarchicalDispatch(hierarchical, x, { pairs, splits, experts }, k, {
    dispatchWire: 'native',
    combineWire: 'native',
    traffic,
  });
  const owned = Array.from(d.ids).every((e) => e === 2 * pg.rank);
  const back = (await d.combine(d.rows)).dataSync();
  const xd = x.dataSync();
  let diff = owned ? 0 : Number.POSITIVE_INFINITY;
  d.order.forEach((p, i) => {
    const t = (p / k) | 0;
    for (let h = 0; h < H; h++) diff = Math.max(diff, Math.abs(back[i * H + h]! - xd[t * H + h]!));
  });
  out['hierarchical.roundTrip'] = diff;
}

// 3. Node-limited routing: groups = nodes of 2 ranks; topk_group = M. Cross-node bytes this rank sent
// in one forward (FP8 dispatch, BF16 combine), summed over the ranks (a forwarding rank sends what
// another would have), flat and two-hop, M = 1 of 2 nodes vs unrestricted.
const remote = async (bytesTo: Float64Array) => {
  const mine = bytesTo.reduce((a, b, j) => a + (Math.floor(j / (P / 2)) !== Math.floor(pg.rank / (P / 2)) ? b : 0), 0);
  return (await pg.allReduce(Float64Array.of(mine)).wait())[0]!;
};
for (const M of [1, 2]) {
  for (const path of ['flat', 'hierarchical'] as const) {
    const moe = new MoE(cfg(2, M), { seed: 5 });
    const h = expertParallel(moe, pg, {
      ranksPerNode: P / 2,
      dispatchWire: 'fp8',
      combineWire: 'bf16',
      ...(path === 'hierarchical' && { hierarchical }),
    });
    await noGrad(() => runMoE(moe, inputOf(pg.rank, 'f32')));
    out[`nodes.${path}.M${M}`] = h.stats.maxNodesPerToken;
    out[`crossNodeBytes.${path}.M${M}`] = await remote(h.stats.bytesTo);
  }
}

// 4. V3's wire: FP8 dispatch equals the layer on quantize-dequantized expert inputs; BF16 combine within bf16 rounding.
for (const combineWire of ['native', 'bf16'] as const) {
  const moe = new MoE(cfg(4, 2), { seed: 3 });
  expertParallel(moe, pg, { dispatchWire: 'fp8', combineWire });
  const x = inputOf(pg.rank, 'f32');
  const y = await noGrad(() => runMoE(moe, x));
  const ref = new MoE(cfg(4, 2), { seed: 3 });
  const g = ref.gate.forward(x);
  const q = quantizeActivation(x.dataSync() as Float32Array, x.shape);
  const xq = fromRaw('f32', x.shape, dequantizeActivation(q.q, q.scales, x.shape));
  const yRef = noGrad(() => ref.routedExperts(xq, g.indices, g.weights).add(ref.sharedExperts!.forward(x)));
  out[`fp8.${combineWire}`] = relativeError(y.dataSync(), yRef.dataSync());
}

if (!reportResult(out)) console.log(`DSV3_RESULT ${JSON.stringify(out)}`);
await world.destroy();

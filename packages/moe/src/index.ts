// @dsv3/moe: DeepSeekMoE: group-limited sigmoid gating, aux-loss-free balancing, dispatch, EPLB.
// Not built yet: this package exports nothing until its issue lands.
export {};

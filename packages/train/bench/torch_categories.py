# torch_step.py's training step under torch.profiler with its time grouped by what the model does
# (issue 11, seventeenth session), in the categories bench/profile-categories.ts uses for dsv3:
# each module's forward runs inside a record_function range named after its category, and each
# backward node (autograd::engine::evaluate_function) is charged to the category of the forward op
# with its sequence number. Times are the caller thread's self time per step (the profiler inflates
# them; the plain steps' wall / CPU are printed first). The last column takes an estimate of the
# profiler's own cost off each line: its op events times (profiled wall − plain median wall) / events.
#   python bench/torch_categories.py CONFIG.json BATCH SEQ THREADS [STEPS]
import json, sys, time
import torch
from torch import nn
from torch.profiler import profile, ProfilerActivity, record_function
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

cfg_path, batch, seq, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 8
torch.set_num_threads(threads)
torch.manual_seed(0)
raw = json.load(open(cfg_path))
raw.pop('num_nextn_predict_layers', None)
config = DeepseekV3Config(**raw)
model = DeepseekV3ForCausalLM(config).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
g = torch.Generator().manual_seed(1)


def category(name, mod):
    if isinstance(mod, nn.Embedding):
        return 'embedding'
    if isinstance(mod, m.DeepseekV3RMSNorm):
        return 'norms'
    if isinstance(mod, m.DeepseekV3Attention):
        return 'attention core (rope, scores, softmax, PV)'
    if isinstance(mod, m.DeepseekV3RotaryEmbedding):
        return 'attention core (rope, scores, softmax, PV)'
    if isinstance(mod, nn.Linear) and '.self_attn.' in name:
        return 'MLA projections'
    if isinstance(mod, m.DeepseekV3MLP):
        return 'MoE shared expert' if 'shared_experts' in name else 'dense MLP'
    if isinstance(mod, m.DeepseekV3TopkRouter):
        return 'MoE gate (scores, routing)'
    if isinstance(mod, m.DeepseekV3Experts):
        return 'MoE routed experts + dispatch / combine'
    if isinstance(mod, m.DeepseekV3MoE):
        return 'MoE routed experts + dispatch / combine'
    if isinstance(mod, m.DeepseekV3DecoderLayer):
        return 'residual adds'
    if name == 'lm_head':
        return 'output head'
    return None


ranges = []
for name, mod in model.named_modules():
    cat = category(name, mod)
    if cat is None:
        continue

    def pre(_m, _a, cat=cat):
        r = record_function('cat:' + cat)
        r.__enter__()
        ranges.append(r)

    def post(_m, _a, _o):
        ranges.pop().__exit__(None, None, None)

    mod.register_forward_pre_hook(pre)
    mod.register_forward_hook(post)


def step():
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    with record_function('cat:optimizer'):
        opt.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    with record_function('cat:cross-entropy'):
        loss = model.loss_function(logits=logits, labels=ids, vocab_size=config.vocab_size)
    loss.backward()
    with record_function('cat:optimizer'):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


for _ in range(4):
    step()
plain, plain_wall = [], []
for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    plain_wall.append((time.perf_counter() - t0) * 1e3)
    plain.append(f'{plain_wall[-1]:.0f}/{(time.process_time() - c0) * 1e3:.0f}')
print('plain steps, wall/CPU ms:', ' '.join(plain))
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - t0) / steps * 1e3
print(f'profiled step: {wall:.1f} ms wall')
events = prof.events()
BWD = 'autograd::engine::evaluate_function: '
seq_cat = {}


def owner(e):
    """('fwd'|'bwd', category or None, sequence number) of an event's innermost marked ancestor."""
    p = e
    while p is not None:
        if p.name.startswith('cat:'):
            return 'fwd', p.name[4:], None
        if p.name.startswith(BWD):
            return 'bwd', None, p.sequence_nr
        p = p.cpu_parent
    return 'fwd', None, None


for e in events:
    if e.sequence_nr >= 0 and not e.name.startswith(BWD):
        kind, cat, _ = owner(e)
        if kind == 'fwd' and cat is not None:
            seq_cat.setdefault(e.sequence_nr, cat)
table, calls = {}, {}
for e in events:
    if e.name.startswith('cat:'):
        continue
    kind, cat, s = owner(e)
    if kind == 'bwd':
        top = e
        while not top.name.startswith(BWD):
            top = top.cpu_parent
        cat = seq_cat.get(s) or ('parameter grad accumulation' if 'AccumulateGrad' in top.name else 'other')
    key = (cat or 'other (outside modules)', kind)
    table[key] = table.get(key, 0) + e.self_cpu_time_total
    calls[key] = calls.get(key, 0) + 1
total = sum(table.values())
per_event = max(0.0, wall - sorted(plain_wall)[len(plain_wall) // 2]) / (sum(calls.values()) / steps)
print(f'caller self time per step: {total / steps / 1e3:.1f} ms in {sum(calls.values()) / steps:.0f} events; '
      f'profiler cost estimated at {per_event * 1e3:.1f} us per event')
print('  profiled ms   events   less the profiler (ms)')
for (cat, kind), t in sorted(table.items(), key=lambda x: -x[1]):
    n = calls[(cat, kind)] / steps
    print(f'{t / steps / 1e3:8.2f} ms {n:8.0f} {max(0.0, t / steps / 1e3 - n * per_event):10.2f} ms  {kind}  {cat}')

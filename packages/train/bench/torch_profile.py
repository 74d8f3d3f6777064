# torch_step.py's training step under torch.profiler: where PyTorch's step goes (issue 11, fifteenth
# session). Same argv as torch_step.py plus the number of profiled steps; prints the plain steps' wall /
# CPU first (the profiler inflates the step), then the aten ops' self CPU time per step, the GEMMs
# (mm, bmm, addmm, baddbmm) summed as one line.
#   python bench/torch_profile.py CONFIG.json BATCH SEQ THREADS [STEPS]
import json, sys, time
import torch
from torch.profiler import profile, ProfilerActivity
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

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


def step():
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


for _ in range(4):
    step()
plain = []
for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    plain.append(f'{(time.perf_counter() - t0) * 1e3:.0f}/{(time.process_time() - c0) * 1e3:.0f}')
print('plain steps, wall/CPU ms:', ' '.join(plain))
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(f'profiled step: {(time.perf_counter() - t0) / steps * 1e3:.1f} ms wall')
gemm = ('aten::mm', 'aten::bmm', 'aten::addmm', 'aten::baddbmm')
groups = {}
for e in prof.key_averages():
    k = 'GEMMs (mm, bmm, addmm, baddbmm)' if e.key in gemm else e.key
    t, c = groups.get(k, (0, 0))
    groups[k] = (t + e.self_cpu_time_total, c + e.count)
total = sum(t for t, _ in groups.values())
print(f'self CPU per step {total / steps / 1e3:.1f} ms in {sum(c for _, c in groups.values()) / steps:.0f} op calls')
for k, (t, c) in sorted(groups.items(), key=lambda x: -x[1][0])[:20]:
    print(f'{t / steps / 1e3:8.2f} ms {c / steps:6.0f} calls  {k}')

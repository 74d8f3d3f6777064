# PyTorch anchor of bench/run.ts: the same DeepSeek-V3 config (HF transformers' DeepseekV3ForCausalLM,
# float32, CPU) trained with the same batch: forward, next-token CE, backward, global-norm clipping,
# AdamW. Reads the HF config JSON path and batch shape from argv, then for every "step" line on stdin
# runs one training step and prints its wall time and the process's CPU time, in seconds.
import json, sys, time
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

cfg_path, batch, seq, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
raw = json.load(open(cfg_path))
raw.pop('num_nextn_predict_layers', None)  # HF has no MTP modules; the dsv3 side runs without them too
config = DeepseekV3Config(**raw)
model = DeepseekV3ForCausalLM(config).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
g = torch.Generator().manual_seed(1)
print('ready', sum(p.numel() for p in model.parameters()), flush=True)
for line in sys.stdin:
    if line.strip() != 'step':
        break
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    t0 = time.perf_counter()
    c0 = time.process_time()
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    print(f'{time.perf_counter() - t0:.6f} {time.process_time() - c0:.6f}', flush=True)

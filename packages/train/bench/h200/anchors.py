# The torch half of the H200 run (run.sh): the anchor of every gpu.ts measurement, on the same GPU in
# the same call, one JSON line each under the same name. cuBLAS fp32 (TF32 off) and bf16 GEMMs, FP8
# through torch._scaled_mm (per-tensor scales) and dequantize + bf16 GEMM, HF transformers decode
# (bf16) and an eager training step (f32, AdamW, clipping) of the model config gpu.ts wrote.
#   python anchors.py MODEL_CONFIG.json [--small]      (--small: tiny sizes, CPU when there is no CUDA)
import json, statistics, sys, time, traceback

import torch

small = '--small' in sys.argv
cfg_path = sys.argv[1]
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
# The sizes of gpu.ts (FULL / SMALL): keep the two in step.
S = dict(gemm=128, fp8=(64, 256, 256), batches=[1, 2], prefill=4, decode=3, train=(2, 16, 1)) if small else \
    dict(gemm=4096, fp8=(4096, 7168, 7168), batches=[1, 16, 64], prefill=32, decode=32, train=(4, 256, 3))
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def emit(**kw):
    print(json.dumps({'kind': 'anchor', 'device': dev, **kw}), flush=True)


def sync():
    if dev == 'cuda':
        torch.cuda.synchronize()


def seconds(fn, span=0.03):
    """Seconds per call: repetitions so a sample spans ~30 ms, median of 5 samples."""
    fn(); sync()
    t = time.perf_counter(); fn(); sync(); once = time.perf_counter() - t
    reps = max(1, min(200, int(span / max(once, 1e-6))))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        samples.append((time.perf_counter() - t) / reps)
    return statistics.median(samples)


def part(name, fn):
    try:
        fn()
    except Exception as e:  # one failing anchor must not cost the others
        print(json.dumps({'kind': 'error', 'name': name, 'error': f'{e}\n{traceback.format_exc()[-1500:]}'}), flush=True)


def gemm():
    n = S['gemm']
    for name, dtype, what in [('gemm-f32', torch.float32, 'cuBLAS fp32 (TF32 off)'), ('gemm-f16', torch.bfloat16, 'cuBLAS bf16')]:
        if dev == 'cpu':
            what = f'torch CPU {str(dtype)[6:]}'
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        s = seconds(lambda: a @ b)
        emit(name=name, what=what, shape=[n, n, n], ms=s * 1e3, value=2 * n ** 3 / s / 1e12, unit='TFLOP/s')


def fp8():
    m, n, k = S['fp8']
    a = torch.randn(m, k, device=dev)
    b = torch.randn(n, k, device=dev)
    flops = 2 * m * n * k
    # Dequantize + bf16: 1x128 activation and 128x128 weight scales applied, then one bf16 GEMM.
    qa = a.to(torch.float8_e4m3fn)
    qb = b.to(torch.float8_e4m3fn)
    sa = torch.rand(m, k // 128, device=dev) + 0.5
    sb = torch.rand(n // 128, k // 128, device=dev) + 0.5
    def deq():
        da = (qa.to(torch.bfloat16).view(m, k // 128, 128) * sa[..., None].to(torch.bfloat16)).view(m, k)
        db = (qb.to(torch.bfloat16).view(n // 128, 128, k // 128, 128) * sb[:, None, :, None].to(torch.bfloat16)).view(n, k)
        return da @ db.t()
    s = seconds(deq)
    emit(name='fp8-gemm-dequant-bf16', what='dequantize (block scales) + bf16 GEMM', shape=[m, n, k], ms=s * 1e3, value=flops / s / 1e12, unit='TFLOP/s')
    if dev == 'cuda' and hasattr(torch, '_scaled_mm'):
        one = torch.tensor(1.0, device=dev)
        s = seconds(lambda: torch._scaled_mm(qa, qb.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        emit(name='fp8-gemm', what='torch._scaled_mm, per-tensor scales', shape=[m, n, k], ms=s * 1e3, value=flops / s / 1e12, unit='TFLOP/s')
    else:
        emit(name='fp8-gemm', what='dequantize (block scales) + bf16 GEMM (no _scaled_mm here)', shape=[m, n, k], ms=s * 1e3, value=flops / s / 1e12, unit='TFLOP/s')


def hf_model(dtype):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    raw = json.load(open(cfg_path))
    raw.pop('num_nextn_predict_layers', None)
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(DeepseekV3Config(**raw)).to(device=dev, dtype=dtype)


def decode():
    dtype = torch.bfloat16 if dev == 'cuda' else torch.float32
    model = hf_model(dtype).eval()
    V = model.config.vocab_size
    P, D = S['prefill'], S['decode']
    for batch in S['batches']:
        ids = (torch.arange(batch * P, device=dev).view(batch, P) * 7919 + 13) % V
        gen = lambda n: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, pad_token_id=0)
        with torch.no_grad():
            gen(2); sync()
            t = time.perf_counter(); gen(1); sync(); t1 = time.perf_counter() - t
            t = time.perf_counter(); gen(D + 1); sync(); tn = time.perf_counter() - t
        emit(name=f'decode-b{batch}', what=f'HF transformers generate, {str(dtype)[6:]}', prefill=P, decode=D, batch=batch,
             value=batch * D / max(tn - t1, 1e-9), unit='tokens/s')


def train():
    batch, seq, steps = S['train']
    model = hf_model(torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator(device='cpu').manual_seed(1)
    def step():
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g).to(dev)
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    s = statistics.median(times)
    emit(name='train-step', what='torch eager, HF transformers, f32 (TF32 off), AdamW, clipping', batch=batch, seqLen=seq,
         ms=s * 1e3, value=batch * seq / s, unit='tokens/s')


emit(name='torch', what=torch.__version__, gpu=torch.cuda.get_device_name() if dev == 'cuda' else None)
for name, fn in [('gemm', gemm), ('fp8', fp8), ('decode', decode), ('train-step', train)]:
    part(name, fn)

# torch.matmul anchor of bench/gemm-shapes.ts: reads {threads, seconds, shapes: [{m, n, k, transA, transB}]}
# as JSON on stdin and prints the median seconds of one product per shape (a JSON list). Operands are
# f32 CPU tensors; a transposed operand is a transposed view of a stored [k, m] / [n, k] tensor, as
# autograd hands them to matmul; the output is allocated by the call, as in a training step.
import json, statistics, sys, time
import torch

spec = json.load(sys.stdin)
torch.set_num_threads(spec['threads'])
torch.manual_seed(0)
out = []
for s in spec['shapes']:
    m, n, k = s['m'], s['n'], s['k']
    a = torch.rand(k, m).t() if s['transA'] else torch.rand(m, k)
    b = torch.rand(n, k).t() if s['transB'] else torch.rand(k, n)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    t0 = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - t0 < spec['seconds']:
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    out.append(statistics.median(times))
print(json.dumps(out))

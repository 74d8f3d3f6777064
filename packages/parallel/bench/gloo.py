# The anchor: PyTorch's gloo backend (torch.distributed) running the same collectives with the same
# ranks and sizes as bench/ranks/collectives.ts; prints one JSON line from rank 0.
import json, os, sys, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def calibrate(run, warm_seconds):
    # As bench/ranks/collectives.ts: timed batches of 1, 2, 4, ... operations until one lasts
    # warm_seconds on the slowest rank; seconds per operation from that batch.
    batch = 1
    while True:
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(batch):
            run()
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        if took.item() >= warm_seconds or batch >= 8192:
            return took.item() / batch
        batch *= 2


def rank_main(rank, world, port, sizes, min_seconds, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for nbytes in sizes:
        buf = torch.ones(nbytes // 4, dtype=torch.float32)
        out = torch.empty_like(buf)
        for op in ("allreduce", "alltoall"):
            run = (lambda: dist.all_reduce(buf)) if op == "allreduce" else (lambda: dist.all_to_all_single(out, buf))
            run()
            per_op = calibrate(run, min_seconds / 2)
            iters = max(2, min(20_000, int(-(-min_seconds // per_op))))
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                run()
            mean = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64)
            dist.all_reduce(mean, op=dist.ReduceOp.MAX)
            if op == "allreduce":
                buf.fill_(1)
            rows.append({"op": op, "bytes": nbytes, "seconds": mean.item(), "iters": iters})
    dist.destroy_process_group()
    if rank == 0:
        q.put(rows)


if __name__ == "__main__":
    world, port, sizes, min_seconds = int(sys.argv[1]), int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], float(sys.argv[4])
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, port, sizes, min_seconds, q)) for r in range(world)]
    for p in procs:
        p.start()
    rows = q.get()
    for p in procs:
        p.join()
    print("BENCH " + json.dumps(rows))

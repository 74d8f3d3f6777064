# gloo's side of bench/ranks/cpu-per-op.ts: repeats one collective (f32 sum all-reduce, or equal-split
# all_to_all_single into a preallocated output) with a barrier before each (COLL_BARRIER=0: back to
# back; the wall figure is then the mean), and prints each rank's CPU
# time per operation (user and system, from getrusage, the first operation left out) and the median
# wall time, in the same format. Run it alternately with the TS probe to compare CPU per byte.
#   COLL_OP=allreduce COLL_BYTES=16777216 COLL_ITERS=10 /work/venv/bin/python bench/gloo-cpu-per-op.py 4
import os, resource, socket, sys, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def ms(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def rank_main(rank, world, port, op, nbytes, iters, with_barrier):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    out = torch.empty_like(buf)
    run = (lambda: dist.all_reduce(buf)) if op == "allreduce" else (lambda: dist.all_to_all_single(out, buf))
    wall = []
    for i in range(iters):
        if with_barrier:
            dist.barrier()
        t0 = time.perf_counter()
        run()
        wall.append(time.perf_counter() - t0)
        if i == 0:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)  # the first operation warms up
            start = time.perf_counter()
        if op == "allreduce":
            buf.fill_(1)  # keep the values bounded
    ru = resource.getrusage(resource.RUSAGE_SELF)
    mean = (time.perf_counter() - start) / (iters - 1)
    wall.sort()
    per = lambda s: ms(s * 1000 / (iters - 1))
    shown = f"median wall {ms(wall[iters >> 1] * 1000)} ms" if with_barrier else f"mean wall {ms(mean * 1000)} ms"
    print(
        f"rank {rank}: {op} of {nbytes} bytes, CPU ms per operation: user {per(ru.ru_utime - ru0.ru_utime)} "
        f"system {per(ru.ru_stime - ru0.ru_stime)}; {shown}",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1])
    op = os.environ.get("COLL_OP", "allreduce")
    nbytes = int(os.environ.get("COLL_BYTES", 16 << 20))
    iters = int(os.environ.get("COLL_ITERS", 10))
    with_barrier = os.environ.get("COLL_BARRIER") != "0"
    if op not in ("allreduce", "alltoall"):
        sys.exit(f"COLL_OP={op}: expected allreduce or alltoall")
    if iters < 2:
        sys.exit(f"COLL_ITERS={iters}: expected at least 2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world, port, op, nbytes, iters, with_barrier)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))

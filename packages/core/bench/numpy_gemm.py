#!/usr/bin/env python3
"""numpy (OpenBLAS) f32 GEMM anchor for packages/core/bench/gemm.ts.

Prints one JSON object: the BLAS numpy uses (library, version, core kernel, threads) and, per square
size, the best and median GFLOP/s of `np.matmul(a, b, out=c)` over timed repetitions. The caller
controls the environment (it unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and sets the thread count).
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np


def _openblas_from_maps():
    """Ask the OpenBLAS that numpy loaded for its config, core kernel and threads via ctypes."""
    path = None
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                if 'openblas' in line.lower() and '.so' in line:
                    path = line.split()[-1]
                    break
    except OSError:
        return None
    if path is None:
        return None
    lib = ctypes.CDLL(path)

    def call(names, restype):
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = restype
                v = fn()
                return v.decode() if isinstance(v, bytes) else v
        return None

    def variants(base):
        return [f'scipy_{base}64_', f'scipy_{base}', f'{base}64_', base]

    return {
        'source': 'ctypes',
        'library': os.path.basename(path),
        'config': call(variants('openblas_get_config'), ctypes.c_char_p),
        'corename': call(variants('openblas_get_corename'), ctypes.c_char_p),
        'threads': call(variants('openblas_get_num_threads'), ctypes.c_int),
    }


def blas_info():
    try:
        from threadpoolctl import threadpool_info  # optional dependency

        for p in threadpool_info():
            if p.get('internal_api') == 'openblas' or p.get('user_api') == 'blas':
                return {
                    'source': 'threadpoolctl',
                    'library': os.path.basename(p.get('filepath', '')),
                    'config': p.get('version'),
                    'corename': p.get('architecture'),
                    'threads': p.get('num_threads'),
                }
    except ImportError:
        pass
    info = _openblas_from_maps()
    if info is not None:
        return info
    cfg = np.show_config(mode='dicts') if hasattr(np, 'show_config') else {}
    blas = cfg.get('Build Dependencies', {}).get('blas', {}) if isinstance(cfg, dict) else {}
    return {'source': 'numpy.show_config', 'library': blas.get('name'), 'config': blas.get('openblas configuration'),
            'corename': None, 'threads': None}


def bench(n, min_reps, min_seconds):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    for _ in range(2):
        np.matmul(a, b, out=c)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    flop = 2.0 * n ** 3
    return {'n': n, 'reps': len(times), 'best_gflops': flop / min(times) / 1e9,
            'median_gflops': flop / statistics.median(times) / 1e9, 'gflops': [flop / t / 1e9 for t in times]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='256,1024,2048')
    ap.add_argument('--min-reps', type=int, default=5)
    ap.add_argument('--min-seconds', type=float, default=1.0)
    args = ap.parse_args()
    results = [bench(int(s), args.min_reps, args.min_seconds) for s in args.sizes.split(',')]
    out = {
        'numpy': np.__version__,
        'python': sys.version.split()[0],
        'blas': blas_info(),
        'env': {k: os.environ.get(k) for k in ('OPENBLAS_NUM_THREADS', 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE')},
        'results': results,
    }
    print(json.dumps(out))


if __name__ == '__main__':
    main()

// Transparent huge pages under the GEMM engine's memory (native/huge-pages.cc through native-kernels.ts's
// adviseHugePages; arena.ts grows the memory in whole steps so blocks filled one by one still land in
// whole 2 MiB pages). Linux only, with the addon built and THP not "never"; the suite skips otherwise,
// unless DSV3_REQUIRE_NATIVE_KERNELS=1 (CI) makes a missing addon a failure.
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, freeResident, gemmInfo } from '../src/cpu/gemm/index.js';
import { adviseHugePages } from '../src/cpu/gemm/native-kernels.js';

const THP = '/sys/kernel/mm/transparent_hugepage/enabled';
const thpMode = existsSync(THP) ? (/\[(\w+)\]/.exec(readFileSync(THP, 'utf8'))?.[1] ?? 'never') : 'never';
const probe = () => new WebAssembly.Memory({ initial: 1, maximum: 2048, shared: true });
const available = thpMode !== 'never' && adviseHugePages(probe(), 2048 * 65536);
const required = process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && thpMode !== 'never';
const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));

/** The process's anonymous memory in transparent huge pages, bytes. */
function anonHugeBytes(): number {
  const m = /AnonHugePages:\s+(\d+) kB/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

describe('transparent huge pages under the engine memory', () => {
  it.runIf(required)(`are available here (THP "${thpMode}", DSV3_REQUIRE_NATIVE_KERNELS=1)`, () => {
    expect(available, 'build the addon with `node packages/core/scripts/build-native.mjs`').toBe(true);
  });

  it.runIf(available)('the default engine took the advice (gemmInfo)', () => {
    expect(gemmInfo().hugePages).toBe(true);
  });

  it.runIf(available)('a shared memory grown and filled after the advice is backed by huge pages', () => {
    const memory = probe();
    expect(adviseHugePages(memory, 2048 * 65536)).toBe(true);
    const before = anonHugeBytes();
    memory.grow(1024); // 64 MiB
    new Uint8Array(memory.buffer).fill(1);
    // every whole 2 MiB range inside the memory; the unaligned ends take small pages
    expect(anonHugeBytes() - before).toBeGreaterThanOrEqual(60 << 20);
  });

  it.runIf(available)('blocks allocated and filled one at a time (a loader streaming weights) get huge pages', () => {
    const before = anonHugeBytes();
    const blocks = Array.from({ length: 128 }, () => {
      const b = allocResident('u8', 512 << 10)!; // zero-filled: touched as it is handed out
      b.fill(7);
      return b;
    });
    try {
      // 64 MiB filled; grown a block at a time the writable mapping would end inside the 2 MiB range
      // each block's first touch falls in, and nearly all of it would be 4 KiB pages
      expect(anonHugeBytes() - before).toBeGreaterThanOrEqual(48 << 20);
    } finally {
      for (const b of blocks) freeResident(b);
    }
  });

  it('no advice when switched off (gemmConfig.hugePages, DSV3_HUGE_PAGES=0) or for a memory that is not shared', () => {
    gemmConfig.hugePages = false;
    try {
      expect(adviseHugePages(probe(), 2048 * 65536)).toBe(false);
    } finally {
      gemmConfig.hugePages = true;
    }
    vi.stubEnv('DSV3_HUGE_PAGES', '0');
    try {
      expect(adviseHugePages(probe(), 2048 * 65536)).toBe(false);
    } finally {
      vi.unstubAllEnvs();
    }
    expect(adviseHugePages(new WebAssembly.Memory({ initial: 1, maximum: 16 }), 16 * 65536)).toBe(false);
  });

  it.runIf(available)(
    'DSV3_NATIVE_KERNELS=0 turns the kernels off, not the advice, and warns about nothing',
    async () => {
      const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {});
      try {
        vi.resetModules();
        vi.stubEnv('DSV3_NATIVE_KERNELS', '0');
        const fresh = await import('../src/cpu/gemm/native-kernels.js');
        expect(fresh.nativeKernels()).toBeNull();
        expect(fresh.adviseHugePages(probe(), 2048 * 65536)).toBe(true);
        expect(warn).not.toHaveBeenCalled();
      } finally {
        vi.unstubAllEnvs();
        vi.resetModules();
        warn.mockRestore();
      }
    },
  );
});

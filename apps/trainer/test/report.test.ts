// report.html renders in headless Chromium (Debian's /usr/bin/chromium) and plots the run's series.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import puppeteer from 'puppeteer-core';
import { writeReport, type MetricRecord } from '@dsv3/train';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

function records(): MetricRecord[] {
  const out: MetricRecord[] = [];
  for (let step = 1; step <= 30; step++) {
    out.push({
      kind: 'train',
      step,
      tokens: step * 512,
      loss: 6 / Math.sqrt(step) + 0.3,
      mainLoss: 6 / Math.sqrt(step),
      mtpLoss: 6.2 / Math.sqrt(step),
      balanceLoss: 3e-4,
      gradNorm: 2 / step + 0.5,
      lr: Math.min(1, step / 10) * 3e-3,
      mtpLambda: 0.3,
      batchSequences: 4,
      maxVio: [2 / step, 1 / step],
      maxVioMean: 1.5 / step,
      tokensPerSec: 500,
      mfu: 0.01,
      elapsedSec: step,
    });
    if (step % 10 === 0)
      out.push({ kind: 'eval', step, tokens: step * 512, evalLoss: 6.1 / Math.sqrt(step), evalTokens: 1000 });
  }
  return out;
}

describe.runIf(existsSync(CHROMIUM) || process.env.CI)('report.html in headless Chromium', () => {
  it("draws loss (train, MTP, eval), LR, per-layer MaxVio and grad-norm charts with the run's data", async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'dsv3-report-')), 'report.html');
    writeReport(path, records(), { title: 'test run', summary: { steps: 30 }, moeLayerNames: ['layer 1', 'MTP 1'] });
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      await page.goto(`file://${path}`, { waitUntil: 'load' });
      const plots = await page.evaluate(() => {
        const w = window as unknown as {
          DSV3_PLOTS: Record<string, { series: { label: string }[]; data: (number | null)[][] }>;
        };
        return Object.fromEntries(
          Object.entries(w.DSV3_PLOTS).map(([id, u]) => [
            id,
            {
              labels: u.series.slice(1).map((s) => s.label),
              x: u.data[0]!.length,
              points: u.data.slice(1).map((d) => d.filter((v) => v !== null).length),
            },
          ]),
        );
      });
      expect(errors).toEqual([]);
      expect(plots).toEqual({
        loss: { labels: ['train loss (CE)', 'MTP loss', 'eval loss'], x: 30, points: [30, 30, 3] },
        lr: { labels: ['lr'], x: 30, points: [30] },
        maxvio: { labels: ['layer 1', 'MTP 1'], x: 30, points: [30, 30] },
        gradnorm: { labels: ['grad norm'], x: 30, points: [30] },
      });
      // uPlot drew canvases of a real size
      const canvases = await page.$$eval('.uplot canvas', (cs) => cs.map((c) => (c as HTMLCanvasElement).width));
      expect(canvases).toHaveLength(4);
      for (const w of canvases) expect(w).toBeGreaterThan(100);
    } finally {
      await browser.close();
    }
  }, 120_000);
});

// OUT/report.html: plots of loss / eval loss, learning rate, MaxVio and gradient norm over steps, drawn
// by uPlot (inlined, so the file works offline). The data sit in window.DSV3_REPORT for tools and tests.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { writeFileAtomic } from '@dsv3/core';
import type { EvalRecord, MetricRecord, StepRecord } from './metrics.js';

export interface ReportChart {
  id: string;
  title: string;
  /** Series names, then per series [steps, values] (each series its own x, as evals are sparser). */
  series: { name: string; x: number[]; y: (number | null)[] }[];
  log?: boolean;
}

export function reportCharts(records: readonly MetricRecord[], moeLayerNames: readonly string[] = []): ReportChart[] {
  const train = records.filter((r): r is StepRecord => r.kind === 'train');
  const evals = records.filter((r): r is EvalRecord => r.kind === 'eval');
  const steps = train.map((r) => r.step);
  const layers = train[0]?.maxVio.length ?? 0;
  return [
    {
      id: 'loss',
      title: 'Loss',
      series: [
        { name: 'train loss (CE)', x: steps, y: train.map((r) => r.mainLoss) },
        { name: 'MTP loss', x: steps, y: train.map((r) => r.mtpLoss) },
        { name: 'eval loss', x: evals.map((r) => r.step), y: evals.map((r) => r.evalLoss) },
      ],
    },
    { id: 'lr', title: 'Learning rate', series: [{ name: 'lr', x: steps, y: train.map((r) => r.lr) }] },
    {
      id: 'maxvio',
      title: 'Expert-load MaxVio per MoE layer',
      series: Array.from({ length: layers }, (_, l) => ({
        name: moeLayerNames[l] ?? `MoE layer ${l}`,
        x: steps,
        y: train.map((r) => r.maxVio[l] ?? null),
      })),
    },
    {
      id: 'gradnorm',
      title: 'Gradient norm (before clipping)',
      series: [{ name: 'grad norm', x: steps, y: train.map((r) => r.gradNorm) }],
    },
  ];
}

const esc = (s: string): string =>
  s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/** The page's script: one uPlot per chart, series aligned on the union of their steps. */
const PAGE_SCRIPT = `
const report = window.DSV3_REPORT;
const palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
window.DSV3_PLOTS = {};
for (const chart of report.charts) {
  const xs = [...new Set(chart.series.flatMap((s) => s.x))].sort((a, b) => a - b);
  const cols = chart.series.map((s) => {
    const m = new Map(s.x.map((x, i) => [x, s.y[i]]));
    return xs.map((x) => (m.has(x) ? m.get(x) : null));
  });
  const el = document.getElementById('chart-' + chart.id);
  const opts = {
    title: chart.title,
    width: Math.min(900, window.innerWidth - 40),
    height: 280,
    scales: { x: { time: false } },
    axes: [{ label: 'step' }, {}],
    series: [{ label: 'step' }, ...chart.series.map((s, i) => ({ label: s.name, stroke: palette[i % palette.length], spanGaps: true, points: { show: s.x.length < 40 } }))],
  };
  window.DSV3_PLOTS[chart.id] = new uPlot(opts, [xs, ...cols], el);
}
`;

export interface ReportMeta {
  title: string;
  summary: Record<string, string | number>;
  /** Labels of the MaxVio series (default: MoE layer 0, 1, ...). */
  moeLayerNames?: readonly string[];
}

export function renderReport(records: readonly MetricRecord[], meta: ReportMeta): string {
  const require = createRequire(import.meta.url);
  const js = readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
  const css = readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const charts = reportCharts(records, meta.moeLayerNames);
  const data = JSON.stringify({ title: meta.title, summary: meta.summary, charts }).replace(/</g, '\\u003c');
  const rows = Object.entries(meta.summary)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(String(v))}</td></tr>`)
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(meta.title)}</title>
<style>${css}
body{font-family:system-ui,sans-serif;margin:20px;color:#222}table{border-collapse:collapse;margin-bottom:16px}th,td{text-align:left;padding:2px 10px;border-bottom:1px solid #eee}.chart{margin:12px 0}</style>
</head><body>
<h1>${esc(meta.title)}</h1>
<table>${rows}</table>
${charts.map((c) => `<div class="chart" id="chart-${c.id}"></div>`).join('\n')}
<script>/* uPlot ${'(MIT, Leon Sorokin)'} */${js}</script>
<script>window.DSV3_REPORT = ${data};</script>
<script>${PAGE_SCRIPT}</script>
</body></html>
`;
}

export function writeReport(path: string, records: readonly MetricRecord[], meta: ReportMeta): void {
  writeFileAtomic(path, [new TextEncoder().encode(renderReport(records, meta))]);
}

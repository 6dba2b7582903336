// A small dependency-free SVG line chart: several named series over one x axis, with axes,
// ticks and a legend. Enough for metrics over steps or over time.

export interface Series {
  name: string;
  points: [number, number][];
}

export interface PlotOptions {
  title: string;
  xLabel: string;
  yLabel?: string;
  /** Fixed y range; default: the data's, padded. */
  yMin?: number;
  yMax?: number;
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export function linePlot(series: Series[], o: PlotOptions): string {
  const W = o.width ?? 720,
    H = o.height ?? 400;
  const m = { left: 56, right: 160, top: 36, bottom: 44 };
  const pts = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = pts.map((p) => p[0]),
    ys = pts.map((p) => p[1]);
  const x0 = xs.length ? Math.min(...xs) : 0,
    x1 = xs.length ? Math.max(...xs) : 1;
  let y0 = o.yMin ?? (ys.length ? Math.min(...ys) : 0),
    y1 = o.yMax ?? (ys.length ? Math.max(...ys) : 1);
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x: number) => m.left + ((x - x0) / (x1 - x0 || 1)) * (W - m.left - m.right);
  const py = (y: number) => H - m.bottom - ((y - y0) / (y1 - y0)) * (H - m.top - m.bottom);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(o.title)}</text>`,
  ];
  for (const t of ticks(y0, y1)) {
    out.push(`<line x1="${m.left}" x2="${W - m.right}" y1="${py(t)}" y2="${py(t)}" stroke="#eee"/>`);
    out.push(`<text x="${m.left - 6}" y="${py(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  for (const t of ticks(x0, x1)) out.push(`<text x="${px(t)}" y="${H - m.bottom + 16}" text-anchor="middle">${fmt(t)}</text>`);
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${H - m.bottom}" stroke="#333"/>`);
  out.push(`<line x1="${m.left}" x2="${W - m.right}" y1="${H - m.bottom}" y2="${H - m.bottom}" stroke="#333"/>`);
  out.push(`<text x="${(m.left + W - m.right) / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  if (o.yLabel) out.push(`<text transform="translate(14 ${(m.top + H - m.bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`);
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (p.length > 1)
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${p.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`,
      );
    if (p.length <= 40) for (const [x, y] of p) out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="2.5" fill="${color}"/>`);
    const ly = m.top + 8 + i * 18;
    out.push(`<line x1="${W - m.right + 12}" x2="${W - m.right + 32}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${W - m.right + 38}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Charts made by linePlot, one under the other in one SVG (each keeps its own size). */
export function stackPlots(plots: string[]): string {
  const size = (svg: string) => {
    const m = /width="(\d+)" height="(\d+)"/.exec(svg);
    if (!m) throw new Error('stackPlots: not a linePlot chart');
    return { w: Number(m[1]), h: Number(m[2]) };
  };
  const sizes = plots.map(size);
  const W = Math.max(...sizes.map((s) => s.w));
  const H = sizes.reduce((a, s) => a + s.h, 0);
  let y = 0;
  const inner = plots.map((svg, k) => {
    // A nested <svg> is placed by its x and y; the namespace is the outer one's.
    const placed = svg.replace('<svg xmlns="http://www.w3.org/2000/svg" ', `<svg x="0" y="${y}" `);
    y += sizes[k]!.h;
    return placed;
  });
  return [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">`, ...inner, '</svg>'].join('\n');
}

function ticks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => span / s <= n) ?? 10 * mag;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

// Whole numbers as they are up to a million (question counts, steps); others to 4 significant digits.
const fmt = (x: number) => (Number.isInteger(x) && Math.abs(x) < 1e6 ? String(x) : Math.abs(x) >= 1000 ? x.toExponential(1) : String(+x.toPrecision(4)));

/** Rows of objects as CSV, columns in the order of the first row's keys; null as empty. */
export function toCsv(rows: Record<string, unknown>[]): string {
  if (!rows.length) return '';
  const cols = Object.keys(rows[0]!);
  const cell = (v: unknown) => {
    if (v === null || v === undefined) return '';
    const s = typeof v === 'number' ? String(+v.toPrecision(6)) : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.join(','), ...rows.map((r) => cols.map((c) => cell(r[c])).join(','))].join('\n') + '\n';
}

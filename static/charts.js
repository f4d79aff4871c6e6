// Small hand-written SVG charts. Each call redraws one <svg> from data; the
// caller decides how often (the dashboard: a few times a second at most).
// Labels come from blobs, i.e. from anyone who can post: always escaped.

const HEIGHT = 150;
const PAD = { top: 20, right: 10, bottom: 22, left: 40 };

/** Text safe to put into SVG markup. */
export function escape(value) {
  return String(value).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c],
  );
}

/** 1234567 → "1,234,567". */
export const formatCount = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));

/** 4712 → "4.71 s", 830 → "830 ms". */
export function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  if (Math.abs(ms) < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

/** A round number ≥ `n` for the top of an axis. */
function niceMax(n) {
  if (n <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= n) return m * step;
  return 10 * step;
}

function widthOf(svg) {
  return Math.max(200, Math.round(svg.clientWidth || svg.parentElement?.clientWidth || 600));
}

function frame(svg, width, height, label) {
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
}

function empty(svg, width, height, message) {
  svg.innerHTML = `<text class="empty" x="${width / 2}" y="${height / 2}" text-anchor="middle">${escape(message)}</text>`;
}

/**
 * Columns over time. `series` oldest first; `xLabels` is [[index, text]] for
 * the axis; `unit` names what a column counts (for the tooltip).
 */
export function columns(svg, series, { xLabels = [], label = 'chart', tooltip = (i, v) => `${v}` } = {}) {
  const width = widthOf(svg);
  frame(svg, width, HEIGHT, label);
  const max = niceMax(Math.max(0, ...series));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const step = plotW / Math.max(1, series.length);
  const gap = step > 4 ? 1 : 0;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  let out = '';
  for (const v of [0, max / 2, max]) {
    out += `<line class="grid" x1="${PAD.left}" x2="${width - PAD.right}" y1="${y(v)}" y2="${y(v)}"/>`;
    out += `<text class="axis" x="${PAD.left - 6}" y="${y(v) + 4}" text-anchor="end">${escape(formatCount(Math.round(v * 10) / 10))}</text>`;
  }
  series.forEach((v, i) => {
    if (v <= 0) return;
    const h = Math.max(1, (v / max) * plotH);
    out += `<rect class="bar" x="${(PAD.left + i * step).toFixed(1)}" y="${(PAD.top + plotH - h).toFixed(1)}" width="${Math.max(0.5, step - gap).toFixed(1)}" height="${h.toFixed(1)}"><title>${escape(tooltip(i, v))}</title></rect>`;
  });
  for (const [i, text] of xLabels) {
    const x = PAD.left + (i + 0.5) * step;
    const anchor = i === 0 ? 'start' : i >= series.length - 1 ? 'end' : 'middle';
    const ax = anchor === 'start' ? PAD.left : anchor === 'end' ? width - PAD.right : x;
    out += `<text class="axis" x="${ax.toFixed(1)}" y="${HEIGHT - 6}" text-anchor="${anchor}">${escape(text)}</text>`;
  }
  svg.innerHTML = out;
}

/** A histogram of ascending `sorted` durations, with median and p95 marked. */
export function histogram(svg, { sorted, median, p95 }, { label = 'duration distribution' } = {}) {
  const width = widthOf(svg);
  frame(svg, width, HEIGHT, label);
  if (sorted.length === 0) {
    empty(svg, width, HEIGHT, 'no sign-ins yet');
    return;
  }
  // The slowest 1% would squeeze everything else into one column.
  const lo = sorted[0];
  const hi = Math.max(lo + 1, sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]);
  const bins = Math.max(8, Math.min(40, Math.floor((width - PAD.left - PAD.right) / 14)));
  const binW = (hi - lo) / bins;
  const counts = new Array(bins).fill(0);
  for (const d of sorted) counts[Math.min(bins - 1, Math.max(0, Math.floor((d - lo) / binW)))] += 1;
  const max = niceMax(Math.max(...counts));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (ms) => PAD.left + ((Math.min(ms, hi) - lo) / (hi - lo)) * plotW;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  let out = '';
  for (const v of [0, max]) {
    out += `<line class="grid" x1="${PAD.left}" x2="${width - PAD.right}" y1="${y(v)}" y2="${y(v)}"/>`;
    out += `<text class="axis" x="${PAD.left - 6}" y="${y(v) + 4}" text-anchor="end">${escape(formatCount(v))}</text>`;
  }
  const step = plotW / bins;
  counts.forEach((n, i) => {
    if (n === 0) return;
    const h = Math.max(1, (n / max) * plotH);
    const from = lo + i * binW;
    out += `<rect class="bar" x="${(PAD.left + i * step).toFixed(1)}" y="${(PAD.top + plotH - h).toFixed(1)}" width="${Math.max(0.5, step - 1).toFixed(1)}" height="${h.toFixed(1)}"><title>${escape(`${formatMs(from)}–${formatMs(from + binW)}: ${formatCount(n)}`)}</title></rect>`;
  });
  // Labels sit in the top margin, median to the left of its line and p95
  // to the right, so they neither cover the bars nor each other.
  for (const [name, ms, cls, side] of [
    ['median', median, 'mark median', 'end'],
    ['p95', p95, 'mark p95', 'start'],
  ]) {
    if (ms === null) continue;
    const mx = x(ms);
    let anchor = side;
    if (anchor === 'end' && mx < PAD.left + 90) anchor = 'start';
    if (anchor === 'start' && mx > width - 90) anchor = 'end';
    const tx = anchor === 'end' ? mx - 4 : mx + 4;
    const ty = anchor === side ? PAD.top - 4 : name === 'median' ? PAD.top + 12 : PAD.top + 26;
    out += `<line class="${cls}" x1="${mx.toFixed(1)}" x2="${mx.toFixed(1)}" y1="${PAD.top - 12}" y2="${PAD.top + plotH}"/>`;
    out += `<text class="${cls}" x="${tx.toFixed(1)}" y="${ty}" text-anchor="${anchor}">${escape(`${name} ${formatMs(ms)}`)}</text>`;
  }
  out += `<text class="axis" x="${PAD.left}" y="${HEIGHT - 6}">${escape(formatMs(lo))}</text>`;
  out += `<text class="axis" x="${width - PAD.right}" y="${HEIGHT - 6}" text-anchor="end">${escape(formatMs(hi))}</text>`;
  svg.innerHTML = out;
}

/** Horizontal bars: one row per [value, count], shares of `total`. */
export function shares(svg, rows, { label = 'breakdown' } = {}) {
  const width = widthOf(svg);
  const rowH = 22;
  const height = Math.max(1, rows.length) * rowH + 4;
  frame(svg, width, height, label);
  svg.style.height = `${height}px`;
  if (rows.length === 0) {
    empty(svg, width, height, 'no data');
    return;
  }
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  const labelW = Math.min(120, Math.round(width * 0.34));
  const numW = 76;
  const barW = Math.max(10, width - labelW - numW - 8);
  let out = '';
  rows.forEach(([value, n], i) => {
    const top = i * rowH + 2;
    const share = total ? n / total : 0;
    const shown = String(value).length > 16 ? String(value).slice(0, 15) + '…' : String(value);
    out += `<g class="row"><title>${escape(`${value}: ${formatCount(n)} (${(share * 100).toFixed(1)}%)`)}</title>`;
    out += `<text class="label" x="0" y="${top + 15}">${escape(shown)}</text>`;
    out += `<rect class="track" x="${labelW}" y="${top + 4}" width="${barW}" height="12" rx="3"/>`;
    out += `<rect class="bar" x="${labelW}" y="${top + 4}" width="${Math.max(1, share * barW).toFixed(1)}" height="12" rx="3"/>`;
    out += `<text class="num" x="${width}" y="${top + 15}" text-anchor="end">${escape(`${Math.round(share * 100)}% · ${formatCount(n)}`)}</text></g>`;
  });
  svg.innerHTML = out;
}

// Small hand-written SVG charts. Each call redraws one <svg> from data; the
// caller decides how often (the dashboard: once a second at most).
// Labels come from blobs, i.e. from anyone who can post: always escaped.

const HEIGHT = 160;
const PAD = { top: 24, right: 10, bottom: 22, left: 48 };

/** Text safe to put into SVG markup. */
export function escape(value) {
  return String(value).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c],
  );
}

/** 1234567 → "1,234,567". */
export const formatCount = (n) =>
  n === null || n === undefined || !Number.isFinite(Number(n)) ? '–' : Number(n).toLocaleString('en-US');

/** A rate: "12.3", or "1,234" once decimals stop mattering. */
export function formatRate(perSecond) {
  if (!Number.isFinite(perSecond)) return '–';
  if (perSecond >= 100) return formatCount(Math.round(perSecond));
  return perSecond.toFixed(1);
}

/** 4712 → "4.71 s", 830 → "830 ms". */
export function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  if (Math.abs(ms) < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

/** An axis value in ms: as short as it can be and still say its unit. */
function axisMs(ms) {
  if (ms === 0) return '0 s';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(1)} s`;
  return `${+(ms / 60_000).toFixed(1)} min`;
}

/** A round number ≥ `n` for the top of an axis. */
function niceMax(n) {
  if (!(n > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= n) return m * step;
  return 10 * step;
}

/**
 * Widths measured once per chart: reading clientWidth right after another
 * chart was redrawn forces a layout, one per chart per render. The page
 * calls forgetWidths() when its size changes.
 */
let widths = new WeakMap();

export function forgetWidths() {
  widths = new WeakMap();
}

function widthOf(svg) {
  const known = widths.get(svg);
  if (known) return known;
  const measured = Math.round(svg.clientWidth || svg.parentElement?.clientWidth || 0);
  // A chart not laid out yet (hidden) is drawn at a guess, and measured again next time.
  if (measured > 0) widths.set(svg, Math.max(200, measured));
  return Math.max(200, measured || 600);
}

function frame(svg, width, height, label) {
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
}

function emptyText(width, height, message) {
  return `<text class="empty" x="${width / 2}" y="${height / 2}" text-anchor="middle">${escape(message)}</text>`;
}

/** What the y axis counts, above it: "sign-ins per second". */
function unitCaption(text) {
  return text ? `<text class="unit" x="0" y="11">${escape(text)}</text>` : '';
}

/** Labels under the plot: [[index, text]], centred on their column. */
function xAxis(xLabels, n, step, width) {
  let out = '';
  for (const [i, text] of xLabels) {
    const x = PAD.left + (i + 0.5) * step;
    const anchor = i <= 0 ? 'start' : i >= n - 1 ? 'end' : 'middle';
    const ax = anchor === 'start' ? PAD.left : anchor === 'end' ? width - PAD.right : x;
    out += `<text class="axis" x="${ax.toFixed(1)}" y="${HEIGHT - 6}" text-anchor="${anchor}">${escape(text)}</text>`;
  }
  return out;
}

/** Grid lines and their values at 0, half and the top. */
function yGrid(max, width, y, format) {
  let out = '';
  for (const v of [0, max / 2, max]) {
    out += `<line class="grid" x1="${PAD.left}" x2="${width - PAD.right}" y1="${y(v)}" y2="${y(v)}"/>`;
    out += `<text class="axis" x="${PAD.left - 6}" y="${y(v) + 4}" text-anchor="end">${escape(format(v))}</text>`;
  }
  return out;
}

/**
 * Columns over time. `series` oldest first; `xLabels` [[index, text]];
 * `unit` says what the y axis counts; `tooltip(i, v)` names a column.
 * With `pickable`, every non-empty column gets a full-height target
 * (`rect.hit`, `data-index`, a button to assistive technology) that the
 * caller can click, and `selected` marks one; the keyboard is the caller's
 * (the chart is one tab stop, its columns none, so a redraw loses no focus). Each bar carries its value in `data-v`.
 */
export function columns(
  svg,
  series,
  { xLabels = [], label = 'chart', unit = '', tooltip = (i, v) => `${v}`, pickable = false, selected = -1 } = {},
) {
  const width = widthOf(svg);
  frame(svg, width, HEIGHT, label);
  // An image's children are hidden from assistive technology: a chart
  // whose columns are buttons is a group.
  if (pickable) svg.setAttribute('role', 'group');
  const max = niceMax(Math.max(0, ...series));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const step = plotW / Math.max(1, series.length);
  const gap = step > 4 ? 1 : 0;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  let out = unitCaption(unit) + yGrid(max, width, y, (v) => formatCount(Math.round(v * 10) / 10));
  series.forEach((v, i) => {
    if (!(v > 0)) return;
    const h = Math.max(1, (v / max) * plotH);
    const x = (PAD.left + i * step).toFixed(1);
    const w = Math.max(0.5, step - gap).toFixed(1);
    const cls = i === selected ? 'bar selected' : 'bar';
    const title = `<title>${escape(tooltip(i, v))}</title>`;
    out += `<rect class="${cls}" data-v="${v}" x="${x}" y="${(PAD.top + plotH - h).toFixed(1)}" width="${w}" height="${h.toFixed(1)}">${pickable ? '' : title}</rect>`;
    if (pickable) {
      out += `<rect class="hit" data-index="${i}" role="button" aria-label="${escape(tooltip(i, v))}" x="${x}" y="${PAD.top}" width="${Math.max(2, step).toFixed(1)}" height="${plotH}">${title}</rect>`;
    }
  });
  out += xAxis(xLabels, series.length, step, width);
  svg.innerHTML = out;
}

/**
 * Sign-in durations of a few windows, one row each: a bar to the median, a
 * paler one on to the 95th percentile, a tick at the 99th; the numbers
 * beside. `rows`: [{name, duration: {count, p50, p95, p99, max}}].
 */
export function percentiles(svg, rows, { label = 'sign-in duration percentiles' } = {}) {
  const width = widthOf(svg);
  const rowH = 30;
  const top = 22;
  const height = top + rows.length * rowH + 20;
  frame(svg, width, height, label);
  svg.style.height = `${height}px`;
  const narrow = width < 460;
  const labelW = narrow ? 70 : 86;
  const numW = narrow ? 96 : 190;
  const barW = Math.max(40, width - labelW - numW - 12);
  const top99 = Math.max(0, ...rows.map((r) => r.duration?.p99 ?? r.duration?.p95 ?? 0));
  const max = niceMax(top99);
  const x = (ms) => labelW + (Math.min(ms, max) / max) * barW;
  // The legend names each mark once, in its colour.
  let out =
    `<text class="mark median" x="${labelW}" y="12">■ median</text>` +
    `<text class="mark p95" x="${labelW + 76}" y="12">■ to p95</text>` +
    `<text class="mark p99" x="${labelW + 148}" y="12">| p99</text>`;
  rows.forEach(({ name, duration: d }, i) => {
    const y0 = top + i * rowH;
    out += `<g class="row"><text class="label" x="0" y="${y0 + 17}">${escape(name)}</text>`;
    out += `<rect class="track" x="${labelW}" y="${y0 + 6}" width="${barW}" height="14" rx="3"/>`;
    if (!d || !d.count || d.p50 === null) {
      out += `<text class="num" x="${width}" y="${y0 + 17}" text-anchor="end">no sign-ins</text></g>`;
      return;
    }
    const tip = `${name}: median ${formatMs(d.p50)}, p95 ${formatMs(d.p95)}, p99 ${formatMs(d.p99)}, longest ${formatMs(d.max)} (${formatCount(d.count)} timed sign-ins)`;
    out += `<title>${escape(tip)}</title>`;
    out += `<rect class="bar" x="${labelW}" y="${y0 + 6}" width="${Math.max(1, x(d.p50) - labelW).toFixed(1)}" height="14" rx="3"/>`;
    if (d.p95 !== null && d.p95 > d.p50) {
      out += `<rect class="bar tail" x="${x(d.p50).toFixed(1)}" y="${y0 + 6}" width="${(x(d.p95) - x(d.p50)).toFixed(1)}" height="14"/>`;
    }
    if (d.p99 !== null) {
      out += `<line class="p99" x1="${x(d.p99).toFixed(1)}" x2="${x(d.p99).toFixed(1)}" y1="${y0 + 2}" y2="${y0 + 24}"/>`;
    }
    const numbers = narrow
      ? `${formatMs(d.p50)} / ${formatMs(d.p95)}`
      : `median ${formatMs(d.p50)} · p95 ${formatMs(d.p95)}`;
    out += `<text class="num" x="${width}" y="${y0 + 17}" text-anchor="end">${escape(numbers)}</text></g>`;
  });
  // The scale, with its unit, under the rows.
  const axisY = top + rows.length * rowH + 14;
  for (const v of [0, max / 2, max]) {
    const anchor = v === 0 ? 'start' : v === max ? 'end' : 'middle';
    out += `<text class="axis" x="${x(v).toFixed(1)}" y="${axisY}" text-anchor="${anchor}">${escape(axisMs(v))}</text>`;
  }
  svg.innerHTML = out;
}

/**
 * Durations over time: per bucket a bar to the median and a tick at the
 * 95th percentile. `buckets[i]` is a server bucket or null (no sign-ins).
 */
export function durationColumns(svg, buckets, { xLabels = [], label = 'duration over time', tooltip = () => '' } = {}) {
  const width = widthOf(svg);
  frame(svg, width, HEIGHT, label);
  const timed = buckets.filter((b) => b && b.duration && b.duration.p50 !== null);
  if (timed.length === 0) {
    svg.innerHTML = emptyText(width, HEIGHT, 'no timed sign-ins');
    return;
  }
  const max = niceMax(Math.max(...timed.map((b) => b.duration.p95 ?? b.duration.p50)));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const step = plotW / Math.max(1, buckets.length);
  const gap = step > 4 ? 1 : 0;
  const y = (v) => PAD.top + plotH - (Math.min(v, max) / max) * plotH;
  let out = unitCaption('sign-in duration') + yGrid(max, width, y, axisMs);
  out += `<text class="mark median" x="${width - PAD.right - 96}" y="11" text-anchor="end">■ median</text>`;
  out += `<text class="mark p95" x="${width - PAD.right}" y="11" text-anchor="end">— p95</text>`;
  buckets.forEach((b, i) => {
    const d = b?.duration;
    if (!d || d.p50 === null) return;
    const x = PAD.left + i * step;
    const w = Math.max(0.5, step - gap);
    out += `<g><title>${escape(tooltip(i, b))}</title>`;
    out += `<rect class="bar" x="${x.toFixed(1)}" y="${y(d.p50).toFixed(1)}" width="${w.toFixed(1)}" height="${Math.max(1, PAD.top + plotH - y(d.p50)).toFixed(1)}"/>`;
    if (d.p95 !== null) {
      out += `<line class="p95" x1="${x.toFixed(1)}" x2="${(x + Math.max(1.5, w)).toFixed(1)}" y1="${y(d.p95).toFixed(1)}" y2="${y(d.p95).toFixed(1)}"/>`;
    }
    out += '</g>';
  });
  out += xAxis(xLabels, buckets.length, step, width);
  svg.innerHTML = out;
}

/** Horizontal bars: one row per [value, count], shares of their sum. */
export function shares(svg, rows, { label = 'breakdown' } = {}) {
  const width = widthOf(svg);
  const rowH = 22;
  const height = Math.max(1, rows.length) * rowH + 4;
  frame(svg, width, height, label);
  svg.style.height = `${height}px`;
  if (rows.length === 0) {
    svg.innerHTML = emptyText(width, height, 'no sign-ins');
    return;
  }
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  const labelW = Math.min(120, Math.round(width * 0.34));
  const numW = 86;
  const barW = Math.max(10, width - labelW - numW - 8);
  let out = '';
  rows.forEach(([value, n], i) => {
    const top = i * rowH + 2;
    const share = total ? n / total : 0;
    const shown = String(value).length > 16 ? String(value).slice(0, 15) + '…' : String(value);
    out += `<g class="row" data-value="${escape(value)}" data-n="${n}"><title>${escape(`${value}: ${formatCount(n)} (${(share * 100).toFixed(1)}%)`)}</title>`;
    out += `<text class="label" x="0" y="${top + 15}">${escape(shown)}</text>`;
    out += `<rect class="track" x="${labelW}" y="${top + 4}" width="${barW}" height="12" rx="3"/>`;
    out += `<rect class="bar" x="${labelW}" y="${top + 4}" width="${Math.max(1, share * barW).toFixed(1)}" height="12" rx="3"/>`;
    out += `<text class="num" x="${width}" y="${top + 15}" text-anchor="end">${escape(`${Math.round(share * 100)}% · ${formatCount(n)}`)}</text></g>`;
  });
  svg.innerHTML = out;
}

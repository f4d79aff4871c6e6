// The dashboard: a live feed and charts of sign-ins, built on kpiggybank.js.
//
// Built to stay responsive at 1,000 sign-ins per second for a whole day:
// each change is folded into bounded statistics as it arrives (O(1) work),
// the feed keeps only its newest rows, and the DOM is touched once per
// animation frame (the feed) or a few times per second (the charts).

import KPiggybank from './kpiggybank.js';
import { SlidingWindow, Rate, summarizeRange, durationOf, timestampMs, agentOf } from './stats.js';
import { columns, histogram, shares, formatCount, formatMs } from './charts.js';

/** Rows in the feed: more would not be read, only cost layout. */
const FEED_ROWS = 100;

/** Changes replayed when the page opens, so it is never blank. */
const REPLAY = FEED_ROWS;

/** Sign-ins behind the duration distribution and the breakdowns. */
const WINDOW = 10_000;

/** Seconds shown by the rate chart. */
const RATE_SECONDS = 300;

/** Charts are redrawn at most this often: nobody reads faster. */
const CHART_INTERVAL_MS = 500;

/** The stored count is re-read at most this often while changes arrive. */
const COUNT_INTERVAL_MS = 1000;

/** Ids remembered to notice a change delivered twice (which should not happen). */
const SEEN_IDS = 4 * WINDOW;

/** Most blobs the range explorer fetches: keeps one click from eating the tab. */
const RANGE_LIMIT = 50_000;

const $ = (id) => document.getElementById(id);

const client = new KPiggybank(location.origin);
const live = new SlidingWindow(WINDOW);
const rate = new Rate(RATE_SECONDS);

/** Newest changes not yet drawn, oldest first; never longer than FEED_ROWS. */
let incoming = [];
let framePending = false;
let chartTimer = null;
let lastChartAt = 0;
let paused = false;
let missedWhilePaused = 0;

/** What tests and curious people can inspect from the console. */
const board = {
  state: 'connecting',
  received: 0,
  duplicates: 0,
  lastError: null,
};
window.kpiggybankDashboard = board;

/** Bounded memory of delivered ids: a set plus its insertion order. */
const seen = new Set();
const seenOrder = [];

function remember(id) {
  if (seen.has(id)) return false;
  seen.add(id);
  seenOrder.push(id);
  if (seenOrder.length > SEEN_IDS) {
    // Forget the oldest quarter at once, so trimming is rare.
    for (const old of seenOrder.splice(0, SEEN_IDS / 4)) seen.delete(old);
  }
  return true;
}

// ---------------------------------------------------------------- live feed

const feed = client.followChanges({ last: REPLAY });

feed.on('change', (change) => {
  if (!remember(change.id)) {
    // Resuming by seq should make this impossible; counted so a test can see it.
    board.duplicates += 1;
    return;
  }
  board.received += 1;
  const doc = change.doc || {};
  live.add(doc);
  rate.add(timestampMs(doc));
  incoming.push(change);
  if (incoming.length > FEED_ROWS) incoming = incoming.slice(-FEED_ROWS);
  if (paused) missedWhilePaused += 1;
  scheduleFrame();
  scheduleCount();
});

feed.on('state', showState);
feed.on('error', (err) => {
  board.lastError = err.message;
  $('status').title = err.message;
});
feed.on('subscribed', () => {
  $('status').title = '';
  refreshCount();
});
feed.on('reset', () => {
  // The store was replaced: what we show belongs to the old one.
  $('feed').replaceChildren();
  incoming = [];
});

let retryTicker = null;
function showState(state) {
  board.state = state;
  const status = $('status');
  status.dataset.state = state;
  clearInterval(retryTicker);
  const label = () => {
    switch (state) {
      case 'live':
        return paused ? 'live · paused' : 'live';
      case 'connecting':
        return 'connecting…';
      case 'reconnecting': {
        const s = Math.ceil(Math.max(0, (feed.retryAt || 0) - Date.now()) / 1000);
        return s > 0 ? `reconnecting in ${s} s…` : 'reconnecting…';
      }
      default:
        return state;
    }
  };
  $('status-text').textContent = label();
  if (state === 'reconnecting') {
    retryTicker = setInterval(() => ($('status-text').textContent = label()), 500);
  }
}

function scheduleFrame() {
  if (framePending || paused) return;
  framePending = true;
  requestAnimationFrame(drawFrame);
}

function drawFrame() {
  framePending = false;
  if (paused) return;
  const batch = incoming;
  incoming = [];
  if (batch.length > 0) drawFeed(batch);
  scheduleCharts();
}

function clock(ms) {
  if (!Number.isFinite(ms)) return '–';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString('en-GB', { hour12: false });
  return today ? time : `${d.toISOString().slice(0, 10)} ${time}`;
}

/** Indented JSON, with short lists of plain values on one line each
 * (an `event_stream` entry reads `["picker", 732]`, not four lines). */
function prettyJson(doc) {
  return JSON.stringify(doc, null, 2).replace(/\[\s*([^[\]{}]*?)\s*\]/g, (whole, inner) =>
    inner.length > 60 ? whole : `[${inner.replace(/,\n\s*/g, ', ')}]`,
  );
}

function feedRow(change) {
  const doc = change.doc || {};
  const li = document.createElement('li');
  li.dataset.id = change.id;
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  const time = document.createElement('time');
  const ts = timestampMs(doc);
  time.textContent = clock(ts);
  if (Number.isFinite(ts)) time.dateTime = new Date(ts).toISOString();
  const agent = document.createElement('span');
  agent.className = 'agent';
  agent.textContent = agentOf(doc);
  const duration = document.createElement('span');
  duration.className = 'duration';
  duration.textContent = formatMs(durationOf(doc));
  summary.append(time, agent, duration);
  details.append(summary);
  // The JSON is built only when opened: 100 rows a frame stay cheap.
  details.addEventListener('toggle', () => {
    if (details.open && !details.querySelector('pre')) {
      const pre = document.createElement('pre');
      pre.textContent = prettyJson(doc);
      details.append(pre);
    }
  });
  li.append(details);
  return li;
}

function drawFeed(batch) {
  const list = $('feed');
  const fragment = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) fragment.append(feedRow(batch[i]));
  list.prepend(fragment);
  while (list.childElementCount > FEED_ROWS) list.lastElementChild.remove();
  $('feed-empty').hidden = list.childElementCount > 0;
}

// ------------------------------------------------------------------ charts

function scheduleCharts() {
  if (chartTimer !== null || paused) return;
  const wait = Math.max(0, lastChartAt + CHART_INTERVAL_MS - performance.now());
  chartTimer = setTimeout(() => {
    chartTimer = null;
    lastChartAt = performance.now();
    drawCharts();
  }, wait);
}

function drawCharts() {
  const series = rate.series();
  const lastTen = series.slice(-10).reduce((a, b) => a + b, 0) / 10;
  $('rate-now').textContent = lastTen >= 10 ? formatCount(Math.round(lastTen)) : lastTen.toFixed(1);
  columns($('rate-chart'), series, {
    label: 'sign-ins per second over the last 5 minutes',
    xLabels: [
      [0, '−5 min'],
      [RATE_SECONDS / 2, '−2.5 min'],
      [RATE_SECONDS - 1, 'now'],
    ],
    tooltip: (i, v) => `${RATE_SECONDS - 1 - i} s ago: ${v}`,
  });
  const durations = live.durations();
  $('median').textContent = formatMs(durations.median);
  $('p95').textContent = formatMs(durations.p95);
  histogram($('duration-chart'), durations);
  const hint = `last ${formatCount(live.size)} sign-ins`;
  $('window-hint').textContent = hint;
  $('breakdown-hint').textContent = hint;
  drawBreakdowns($('breakdowns'), live.breakdowns());
}

function drawBreakdowns(container, breakdowns) {
  for (const { key, label, rows } of breakdowns) {
    let section = container.querySelector(`[data-key="${key}"]`);
    if (!section) {
      section = document.createElement('div');
      section.className = 'breakdown';
      section.dataset.key = key;
      const h = document.createElement('h3');
      h.textContent = label;
      const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
      svg.classList.add('shares');
      section.append(h, svg);
      container.append(section);
    }
    shares(section.querySelector('svg'), rows, { label: `${label} breakdown` });
  }
}

// Time moves on without sign-ins: keep the rate chart's "now" current.
setInterval(() => {
  if (!paused && !document.hidden) scheduleCharts();
}, 1000);

// The SVGs are drawn for their width: redraw when it changes.
let resizeTimer = null;
addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    drawCharts();
    if (lastRange) drawRange(lastRange);
  }, 100);
});

// ------------------------------------------------------------------- count

let countTimer = null;
let lastCountAt = 0;

function scheduleCount() {
  if (countTimer !== null) return;
  const wait = Math.max(0, lastCountAt + COUNT_INTERVAL_MS - performance.now());
  countTimer = setTimeout(refreshCount, wait);
}

async function refreshCount() {
  clearTimeout(countTimer);
  countTimer = null;
  lastCountAt = performance.now();
  try {
    $('total').textContent = formatCount(await client.count());
  } catch (e) {
    // The feed's status already says the server is away.
    board.lastError = e.message;
  }
}

// ------------------------------------------------------------ pause/resume

$('pause').addEventListener('click', () => {
  paused = !paused;
  const button = $('pause');
  button.textContent = paused ? 'Resume' : 'Pause';
  button.setAttribute('aria-pressed', String(paused));
  document.body.classList.toggle('paused', paused);
  if (paused) {
    missedWhilePaused = 0;
  } else {
    $('feed-hint').textContent = 'newest first';
    scheduleFrame();
    scheduleCharts();
  }
  showState(board.state);
});

setInterval(() => {
  if (paused) $('feed-hint').textContent = `paused · ${formatCount(missedWhilePaused)} new`;
}, 500);

// ---------------------------------------------------------- range explorer

let lastRange = null;

/** A Date as the value of an <input type=datetime-local> (local time). */
function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 19);
}

function fromLocalInput(value) {
  return value ? new Date(value).getTime() : NaN;
}

document.querySelectorAll('.presets button').forEach((button) => {
  button.addEventListener('click', () => {
    const minutes = button.dataset.minutes;
    const now = Date.now();
    $('range-start').value = minutes === 'all' ? '' : toLocalInput(now - Number(minutes) * 60_000);
    $('range-end').value = minutes === 'all' ? '' : toLocalInput(now + 1000);
    loadRange();
  });
});

$('range-form').addEventListener('submit', (event) => {
  event.preventDefault();
  loadRange();
});

async function loadRange() {
  const start = fromLocalInput($('range-start').value);
  const end = fromLocalInput($('range-end').value);
  const summary = $('range-summary');
  if (Number.isFinite(start) && Number.isFinite(end) && start > end) {
    summary.textContent = '“From” is after “To”.';
    return;
  }
  summary.textContent = 'Loading…';
  summary.dataset.state = 'loading';
  try {
    const docs = await client.fetchRange({
      start: Number.isFinite(start) ? start : undefined,
      end: Number.isFinite(end) ? end : undefined,
      limit: RANGE_LIMIT,
    });
    lastRange = summarizeRange(
      docs,
      Number.isFinite(start) ? start : NaN,
      Number.isFinite(end) ? end : NaN,
    );
    const capped = docs.length >= RANGE_LIMIT ? ` (the first ${formatCount(RANGE_LIMIT)})` : '';
    summary.innerHTML = '';
    const count = document.createElement('strong');
    count.id = 'range-count';
    count.textContent = formatCount(docs.length);
    summary.append(count, ` sign-ins${capped}`);
    if (docs.length > 0) {
      summary.append(
        ` · median ${formatMs(lastRange.durations.median)} · p95 ${formatMs(lastRange.durations.p95)}`,
      );
    }
    summary.dataset.state = 'done';
    $('range-result').hidden = docs.length === 0;
    if (docs.length > 0) drawRange(lastRange);
  } catch (e) {
    summary.textContent = `Could not load the range: ${e.message}`;
    summary.dataset.state = 'error';
  }
}

function bucketName(ms) {
  const s = ms / 1000;
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${s / 60} min`;
  if (s < 86400) return `${s / 3600} h`;
  return `${s / 86400} d`;
}

function drawRange(range) {
  $('range-bucket').textContent = `per ${bucketName(range.bucketMs)}`;
  const n = range.series.length;
  columns($('range-rate-chart'), range.series, {
    label: 'sign-ins over the chosen window',
    xLabels: [
      [0, clock(range.from)],
      [n - 1, clock(range.from + n * range.bucketMs)],
    ],
    tooltip: (i, v) => `${clock(range.from + i * range.bucketMs)}: ${formatCount(v)}`,
  });
  histogram($('range-duration-chart'), range.durations);
  drawBreakdowns($('range-breakdowns'), range.breakdowns);
}

// ------------------------------------------------------------------ API

// The API summary is folded away; a link to #api opens it.
function openApiFromHash() {
  if (location.hash === '#api') $('api').open = true;
}
addEventListener('hashchange', openApiFromHash);
openApiFromHash();

showState(feed.state);
drawCharts();

// The dashboard: KPIs computed by the server, a live feed of the latest
// sign-ins, and a range explorer, built on kpiggybank.js.
//
// Every figure comes from the server's rollups, which count every stored
// sign-in: at first paint from GET …/stats for each window, then from the
// live frames of …/stats/stream (one a second, whatever the ingest rate).
// The page never computes a KPI from the blobs it happens to receive; the
// feed only shows them, at most FEED_SAMPLE a second once the server
// samples, and falls back to polling the newest when it cannot keep up.
// Work is bounded: one render per frame at most, capped rows and buffers.

import KPiggybank from './kpiggybank.js';
import {
  WINDOWS,
  RATE_SECONDS,
  Kpis,
  windowBounds,
  breakdowns,
  fillSeries,
  chooseBucket,
  bucketName,
  rawRanges,
  durationOf,
  timestampMs,
  agentOf,
} from './stats.js';
import {
  columns,
  percentiles,
  durationColumns,
  shares,
  formatCount,
  formatMs,
  formatRate,
  forgetWidths,
} from './charts.js';

/** Rows in the feed: more would not be read, only cost layout. */
const FEED_ROWS = 100;

/** Changes replayed when the page opens, so it is never blank. */
const REPLAY = FEED_ROWS;

/**
 * Changes a second the feed asks the server for: more than anyone reads,
 * few enough for any browser at any ingest rate. A server that predates
 * sampling ignores it and sends every change.
 */
const FEED_SAMPLE = 50;

/**
 * Changes received in one second beyond which the page stops following
 * them (a server that does not sample, at a rate no page can parse) and
 * shows the newest by polling instead. `?feed_max=N` in the page's address
 * lowers it, for a slow machine or a test.
 */
const FEED_MAX_PER_S = Number(new URLSearchParams(location.search).get('feed_max')) || 2000;

/** Newest sign-ins fetched per poll while the feed is too fast to follow. */
const POLL_ROWS = 20;
const POLL_MS = 2000;

/** The stored answer each window is asked for at first paint and after each connect. */
const STORED_BUCKET = { '10s': '10s', '5m': '1s', '1h': '1h' };

/**
 * While the live side is short for a window (a server that started within
 * it), its stored answer is asked again this often, one bucket only.
 */
const RECHECK = { '10s': ['10s', 5000], '5m': ['5m', 5000], '1h': ['1h', 5000] };

/** The stored count is re-read at most this often while sign-ins arrive. */
const COUNT_INTERVAL_MS = 1000;

/** Ids remembered to notice a change delivered twice (which should not happen). */
const SEEN_IDS = 10_000;

/** Blobs listed for one bucket of the range explorer. */
const BUCKET_LIST = 100;

const $ = (id) => document.getElementById(id);

const client = new KPiggybank(location.origin);
const kpis = new Kpis();

/** The server's clock minus ours, from the newest frame: windows are cut by its clock. */
let clockOffset = 0;
const serverNow = () => Date.now() + clockOffset;

let paused = false;
let missedWhilePaused = 0;

/** What tests and curious people can inspect from the console. */
const board = {
  /** The worse of the two feeds' states: live, connecting, reconnecting. */
  state: 'connecting',
  statsState: 'connecting',
  changesState: 'connecting',
  /** Whether the tiles and charts show figures that stopped updating. */
  stale: false,
  /** Change frames received and shown in the feed. */
  received: 0,
  duplicates: 0,
  /** Live stats frames received. */
  frames: 0,
  /** Per window: where its figures come from now ('live', 'stored', 'none'). */
  sources: {},
  /** What the first paint showed: {at, rate (sum of the 5-minute chart), count5m, count1h}. */
  firstPaint: null,
  /** What the last render showed, in the same terms. */
  shown: null,
  /** How long the last render of the figures took, in ms. */
  renderMs: null,
  /** 'follow' while the feed is followed, 'poll' while it is too fast to follow. */
  feedMode: 'follow',
  /** When the feed went from following to polling and back, and at what rate. */
  feedSwitches: [],
  lastError: null,
};
window.kpiggybankDashboard = board;

// ------------------------------------------------------------ KPIs

/** Asks the store for window `name` ending at `at` (server time), `bucket` wide. */
async function storedWindow(name, at, bucket) {
  const seconds = WINDOWS.find(([n]) => n === name)[1];
  const { start, end } = windowBounds(at, seconds);
  return client.stats({ start, end, bucket });
}

/** First paint: every window from the store at once, before any live frame. */
async function firstPaint() {
  const at = serverNow();
  const count = refreshCount();
  const answers = await Promise.allSettled(
    WINDOWS.map(([name]) => storedWindow(name, at, STORED_BUCKET[name])),
  );
  answers.forEach((a, i) => {
    // A frame that came first wins; a failure is shown by the status pill.
    if (a.status === 'fulfilled' && !kpis.stored[WINDOWS[i][0]]) kpis.setStored(WINDOWS[i][0], a.value, at);
    if (a.status === 'rejected') board.lastError = a.reason.message;
  });
  await count;
  render();
  board.firstPaint = { at: Date.now(), ...board.shown };
}

/** Windows whose stored answer must be compared with the next frame. */
let toCheck = new Set(WINDOWS.map(([n]) => n));
const lastCheck = {};
let checking = false;

/**
 * Compares the live frame with the store for the windows due: the same
 * window, cut at the frame's instant. Complete live windows are followed
 * live from then on; short ones are shown from the store and asked again.
 */
async function check(frame, names, bucketOf) {
  if (checking) return;
  checking = true;
  try {
    await Promise.all(
      names.map(async (name) => {
        lastCheck[name] = Date.now();
        try {
          const answer = await storedWindow(name, frame.at, bucketOf(name));
          kpis.check(name, frame, answer);
          toCheck.delete(name);
        } catch (e) {
          board.lastError = e.message; // asked again at the next frame
        }
      }),
    );
  } finally {
    checking = false;
  }
  scheduleRender();
}

const statsFeed = client.followStats();

statsFeed.on('stats', (frame) => {
  board.frames += 1;
  clockOffset = frame.at - Date.now();
  kpis.setFrame(frame);
  if (toCheck.size > 0) {
    check(frame, [...toCheck], (name) => STORED_BUCKET[name]);
  } else {
    const due = WINDOWS.map(([n]) => n).filter(
      (n) => !kpis.trusted[n] && Date.now() - (lastCheck[n] || 0) >= RECHECK[n][1],
    );
    if (due.length > 0) check(frame, due, (name) => RECHECK[name][0]);
  }
  if (frame.windows['10s'].count > 0) scheduleCount();
  trueRate = frame.windows['10s'].count / 10;
  feedGovernor(frame);
  scheduleRender();
});

statsFeed.on('state', (state) => {
  board.statsState = state;
  if (state !== 'live') {
    // Another server, or this one restarted: its live rollup may have
    // started within the windows. Compared again at the next frame.
    kpis.untrust();
    toCheck = new Set(WINDOWS.map(([n]) => n));
  } else {
    refreshCount();
  }
  showState();
  markStale();
});

statsFeed.on('error', (err) => {
  board.lastError = err.message;
  $('status').title = err.message;
});

let renderPending = false;
function scheduleRender() {
  if (renderPending || paused || document.hidden) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    if (!paused) render();
  });
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) scheduleRender();
});

function render() {
  const began = performance.now();
  // Measured before anything is written, so it costs no extra layout.
  const narrow = ($('rate-chart').clientWidth || 600) < 480;
  const shown = Object.fromEntries(WINDOWS.map(([n]) => [n, kpis.window(n)]));
  board.sources = Object.fromEntries(WINDOWS.map(([n]) => [n, shown[n].source]));
  const has = (n) => shown[n].source !== 'none';
  const ten = shown['10s'].summary;
  const five = shown['5m'].summary;
  const hour = shown['1h'].summary;
  $('rate-now').textContent = has('10s') ? formatRate(ten.count / 10) : '–';
  $('count-5m').textContent = has('5m') ? formatCount(five.count) : '–';
  $('count-1h').textContent = has('1h') ? formatCount(hour.count) : '–';
  $('median').textContent = formatMs(five.duration.p50);
  $('p95').textContent = formatMs(five.duration.p95);

  const rate = kpis.rate(serverNow());
  const rateChart = $('rate-chart');
  columns(rateChart, rate.counts, {
    label: 'sign-ins per second over the last 5 minutes',
    unit: 'sign-ins per second',
    // A label a minute, or every 2.5 minutes where a minute is too narrow.
    xLabels:
      narrow
        ? [
            [0, '−5 min'],
            [RATE_SECONDS / 2, '−2.5 min'],
            [RATE_SECONDS - 1, 'now'],
          ]
        : [
            [0, '−5 min'],
            [60, '−4 min'],
            [120, '−3 min'],
            [180, '−2 min'],
            [240, '−1 min'],
            [RATE_SECONDS - 1, 'now'],
          ],
    tooltip: (i, v) => `${clock(rate.start + i * 1000)}: ${formatCount(v)} sign-ins`,
  });

  percentiles(
    $('duration-chart'),
    [
      { name: 'last 10 s', duration: ten.duration },
      { name: 'last 5 min', duration: five.duration },
      { name: 'last hour', duration: hour.duration },
    ],
    { label: 'sign-in duration: median, p95 and p99 of the last 10 seconds, 5 minutes and hour' },
  );

  $('breakdown-hint').textContent = `last hour · ${formatCount(hour.count)} sign-ins`;
  drawBreakdowns($('breakdowns'), breakdowns(hour));

  const asOf = kpis.asOf();
  $('tiles').dataset.asOf = asOf ? new Date(asOf).toISOString() : '';
  board.shown = {
    rate: rate.counts.reduce((a, b) => a + b, 0),
    count5m: five.count,
    count1h: hour.count,
    sources: { ...board.sources },
  };
  updateFeedRate();
  markStale();
  board.renderMs = performance.now() - began;
}

function drawBreakdowns(container, list) {
  for (const { key, label, rows } of list) {
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

/** Tiles and charts that stopped updating look it, and say since when. */
function markStale() {
  const stale = board.statsState === 'reconnecting' || board.statsState === 'closed';
  board.stale = stale;
  for (const id of ['tiles', 'charts']) $(id).dataset.stale = String(stale);
  const note = $('stale-note');
  if (stale) {
    const asOf = kpis.asOf();
    note.textContent = asOf
      ? `Not updating: the server is out of reach. Figures as of ${clock(asOf)}; reconnecting…`
      : 'Not updating: the server is out of reach; reconnecting…';
  }
  note.hidden = !stale;
}

// Time moves on without frames: keep "as of" and the feed's rate honest.
setInterval(() => {
  if (board.stale) markStale();
}, 1000);

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
    // The status pill already says the server is away.
    board.lastError = e.message;
  }
}

// ------------------------------------------------------------- live feed

/** Newest changes not yet drawn, oldest first; never longer than FEED_ROWS. */
let incoming = [];
let framePending = false;

/** Bounded memory of shown ids: a set plus its insertion order. */
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

/** Changes received per second over the last 10 s, by arrival: a ring of counters. */
const arrivals = new Uint32Array(10);
let arrivalSecond = Math.floor(Date.now() / 1000);
function countArrival(n) {
  const now = Math.floor(Date.now() / 1000);
  for (let s = arrivalSecond + 1; s <= Math.min(now, arrivalSecond + 10); s++) arrivals[s % 10] = 0;
  arrivalSecond = Math.max(arrivalSecond, now);
  arrivals[now % 10] += n;
  return arrivals[now % 10];
}
const receivedRate = () => {
  countArrival(0);
  return arrivals.reduce((a, b) => a + b, 0) / 10;
};

/** Sign-ins per second stored, by the server's rollup (last 10 s). */
let trueRate = NaN;

let feed = null;

/** Follows the changes: with a replay at first, from now when resuming after polling. */
function follow({ replay = true } = {}) {
  feed = client.followChanges({ ...(replay ? { last: REPLAY } : {}), sample: FEED_SAMPLE });
  feed.on('change', (change) => {
    if (countArrival(1) > FEED_MAX_PER_S) {
      stopFollowing();
      return;
    }
    show(change);
  });
  feed.on('state', (state) => {
    board.changesState = state === 'closed' ? board.changesState : state;
    showState();
  });
  feed.on('error', (err) => {
    board.lastError = err.message;
    $('status').title = err.message;
  });
  feed.on('subscribed', () => {
    $('status').title = '';
  });
  feed.on('reset', () => {
    // The store was replaced: what we show belongs to the old one.
    $('feed').replaceChildren();
    incoming = [];
  });
}

function show(change) {
  if (!remember(change.id)) {
    // Resuming by seq should make this impossible; counted so a test can see it.
    board.duplicates += 1;
    return;
  }
  board.received += 1;
  incoming.push(change);
  if (incoming.length > FEED_ROWS) incoming = incoming.slice(-FEED_ROWS);
  if (paused) missedWhilePaused += 1;
  scheduleFrame();
  scheduleCount();
}

let pollTimer = null;
let pollingSince = 0;

/** Least time spent polling before following again: bursts must not make the feed flap. */
const POLL_AT_LEAST_MS = 10_000;

/**
 * More changes arrive than a page can parse, and the server does not
 * sample them: stop following, and show the newest few every POLL_MS.
 */
function stopFollowing() {
  if (board.feedMode === 'poll') return;
  board.feedMode = 'poll';
  board.feedSwitches.push({ at: Date.now(), to: 'poll', perSecond: arrivals[Math.floor(Date.now() / 1000) % 10] });
  pollingSince = Date.now();
  feed.close();
  feed = null;
  board.changesState = 'live';
  const poll = async () => {
    try {
      const newest = await client.fetchRange({ limit: POLL_ROWS, descending: true });
      for (const doc of newest.reverse()) show({ id: doc._id, doc });
    } catch (e) {
      board.lastError = e.message;
    }
  };
  poll();
  pollTimer = setInterval(poll, POLL_MS);
  updateFeedRate();
}

/**
 * Follows the feed again once the rate it would bring is back within
 * reach: no second of the last ten above half the limit, by the server's
 * count, after polling for a while.
 */
function feedGovernor(frame) {
  if (board.feedMode !== 'poll' || Date.now() - pollingSince < POLL_AT_LEAST_MS) return;
  const recent = frame.per_second.counts.slice(-10);
  if (Math.max(...recent) < FEED_MAX_PER_S / 2) {
    clearInterval(pollTimer);
    board.feedMode = 'follow';
    board.feedSwitches.push({ at: Date.now(), to: 'follow', perSecond: Math.max(...recent) });
    follow({ replay: false });
    updateFeedRate();
  }
}

/** Beside the feed: the true rate, and how much of it the feed shows. */
function updateFeedRate() {
  const rate = $('feed-rate');
  if (!Number.isFinite(trueRate)) {
    rate.textContent = '–';
    return;
  }
  let how;
  if (board.feedMode === 'poll') {
    how = `too many to follow: the newest ${POLL_ROWS} every ${POLL_MS / 1000} s`;
  } else if (trueRate > FEED_SAMPLE && receivedRate() < trueRate * 0.9) {
    how = `a sample of at most ${FEED_SAMPLE} a second`;
  } else {
    how = 'every one';
  }
  rate.textContent = `${formatRate(trueRate)} sign-ins/s stored (last 10 s) · showing ${how}`;
  rate.dataset.mode = board.feedMode;
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
}

// Formatters made once: toLocaleTimeString(…, options) builds one per
// call, which costs a frame when a chart labels 300 bars.
const FORMAT = {
  seconds: new Intl.DateTimeFormat('en-GB', { hour12: false, hour: '2-digit', minute: '2-digit', second: '2-digit' }),
  minutes: new Intl.DateTimeFormat('en-GB', { hour12: false, hour: '2-digit', minute: '2-digit' }),
  day: new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short' }),
  dayOfYear: new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric' }),
};

/** A time as people read it: with the date when it is not today (or `withDate`). */
function clock(ms, { withDate = false, seconds = true } = {}) {
  if (!Number.isFinite(ms)) return '–';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const time = (seconds ? FORMAT.seconds : FORMAT.minutes).format(d);
  return today && !withDate ? time : `${dateOf(d)} ${time}`;
}

/** "2 Dec", or "2 Dec 2025" outside this year. */
function dateOf(d) {
  const sameYear = d.getFullYear() === new Date().getFullYear();
  return (sameYear ? FORMAT.day : FORMAT.dayOfYear).format(d);
}

/** Indented JSON, with short lists of plain values on one line each
 * (an `event_stream` entry reads `["picker", 732]`, not four lines). */
function prettyJson(doc) {
  return JSON.stringify(doc, null, 2).replace(/\[\s*([^[\]{}]*?)\s*\]/g, (whole, inner) =>
    inner.length > 60 ? whole : `[${inner.replace(/,\n\s*/g, ', ')}]`,
  );
}

function feedRow(id, doc, { withDate = false } = {}) {
  const li = document.createElement('li');
  li.dataset.id = id;
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  const time = document.createElement('time');
  const ts = timestampMs(doc);
  time.textContent = clock(ts, { withDate });
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
  for (let i = batch.length - 1; i >= 0; i--) {
    fragment.append(feedRow(batch[i].id, batch[i].doc || {}));
  }
  list.prepend(fragment);
  while (list.childElementCount > FEED_ROWS) list.lastElementChild.remove();
  $('feed-empty').hidden = list.childElementCount > 0;
}

// ------------------------------------------------------------ status pill

const WORST = ['closed', 'reconnecting', 'connecting', 'live'];
let retryTicker = null;

function showState() {
  const states = [board.statsState, board.feedMode === 'poll' ? 'live' : board.changesState];
  const state = WORST.find((s) => states.includes(s)) || 'live';
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
        const at = Math.max(statsFeed.retryAt || 0, feed?.retryAt || 0);
        const s = Math.ceil(Math.max(0, at - Date.now()) / 1000);
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
    scheduleRender();
  }
  showState();
});

setInterval(() => {
  if (paused) $('feed-hint').textContent = `paused · ${formatCount(missedWhilePaused)} new`;
  else updateFeedRate();
}, 1000);

// ---------------------------------------------------------- range explorer

/** The window shown: the asked bounds, the filled series, the server's total. */
let range = null;
/** The bucket the keyboard or a click is on, or -1. */
let cursor = -1;
/** Increases per request, so an answer that comes after a newer one is dropped. */
let rangeRequest = 0;

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
    const minutes = Number(button.dataset.minutes);
    const now = serverNow();
    $('range-start').value = toLocalInput(now - minutes * 60_000);
    $('range-end').value = toLocalInput(now + 1000);
    document.querySelectorAll('.presets button').forEach((b) =>
      b.setAttribute('aria-pressed', String(b === button)),
    );
    loadRange();
  });
});

$('range-form').addEventListener('submit', (event) => {
  event.preventDefault();
  document.querySelectorAll('.presets button').forEach((b) => b.setAttribute('aria-pressed', 'false'));
  loadRange();
});

async function loadRange() {
  const start = fromLocalInput($('range-start').value);
  const end = fromLocalInput($('range-end').value);
  const summary = $('range-summary');
  if (Number.isFinite(start) && Number.isFinite(end) && start > end) {
    summary.textContent = '“From” is after “To”.';
    summary.dataset.state = 'error';
    return;
  }
  const request = ++rangeRequest;
  summary.textContent = 'Loading…';
  summary.dataset.state = 'loading';
  const bounded = Number.isFinite(start) && Number.isFinite(end);
  try {
    const answer = await client.stats({
      start: Number.isFinite(start) ? start : undefined,
      end: Number.isFinite(end) ? end : undefined,
      // Round buckets for a known window; the server picks for an open one.
      bucket: bounded ? chooseBucket(end - start) : undefined,
    });
    if (request !== rangeRequest) return;
    const series = fillSeries(answer);
    range = {
      ...series,
      askedStart: Number.isFinite(start) ? start : answer.start,
      askedEnd: answer.end,
      total: answer.total,
      relativeError: answer.percentiles?.relative_error,
    };
    cursor = -1;
    $('bucket').hidden = true;
    summary.replaceChildren();
    const count = document.createElement('strong');
    count.id = 'range-count';
    count.textContent = formatCount(answer.total.count);
    summary.append(count, ` sign-ins from ${clock(range.askedStart, { withDate: true })} to ${clock(range.askedEnd, { withDate: true })}`);
    const d = answer.total.duration;
    if (d.count > 0) {
      const within = range.relativeError ? ` (percentiles within ${Math.round(range.relativeError * 100)}%)` : '';
      summary.append(` · median ${formatMs(d.p50)} · p95 ${formatMs(d.p95)} · p99 ${formatMs(d.p99)}${within}`);
    }
    summary.dataset.state = 'done';
    $('range-result').hidden = answer.total.count === 0;
    if (answer.total.count > 0) drawRange();
  } catch (e) {
    if (request !== rangeRequest) return;
    summary.textContent = `Could not load the window: ${e.message}`;
    summary.dataset.state = 'error';
  }
}

/** Whether times in the window need their date: it spans days, or is not today. */
function spansDays(r) {
  const from = new Date(r.from);
  const to = new Date(r.to);
  return r.to - r.from >= 86_400_000 || from.toDateString() !== to.toDateString() ||
    from.toDateString() !== new Date().toDateString();
}

/** How a bucket's start reads on the axis and in tooltips. */
function bucketTime(r, ms) {
  if (r.bucketMs >= 86_400_000) return dateOf(new Date(ms));
  return clock(ms, { withDate: spansDays(r), seconds: r.bucketMs < 60_000 });
}

/** About five labels along the axis, fewer on a narrow chart. */
function rangeLabels(r, svg) {
  const n = r.counts.length;
  const ticks = (svg.clientWidth || 600) < 480 ? 3 : 5;
  const out = [];
  for (let t = 0; t < ticks; t++) {
    const i = Math.round((t * (n - 1)) / (ticks - 1));
    if (out.length && out[out.length - 1][0] === i) continue;
    out.push([i, bucketTime(r, r.from + i * r.bucketMs)]);
  }
  return out;
}

/** The part of bucket `i` inside the asked window, in ms: [start, end]. */
function bucketBounds(r, i) {
  const start = Math.max(r.from + i * r.bucketMs, r.askedStart);
  const end = Math.min(r.from + (i + 1) * r.bucketMs - 1, r.askedEnd);
  return [start, end];
}

function drawRange() {
  const r = range;
  $('range-bucket').textContent = `per ${bucketName(r.bucketMs)}`;
  const svg = $('range-rate-chart');
  columns(svg, r.counts, {
    label: `sign-ins per ${bucketName(r.bucketMs)} over the chosen window`,
    unit: `sign-ins per ${bucketName(r.bucketMs)}`,
    xLabels: rangeLabels(r, svg),
    tooltip: (i, v) => {
      const [s, e] = bucketBounds(r, i);
      return `${bucketTime(r, s)} – ${bucketTime(r, e + 1)}: ${formatCount(v)} sign-ins`;
    },
    pickable: true,
    selected: cursor,
  });
  durationColumns($('range-duration-chart'), r.buckets, {
    label: `sign-in duration per ${bucketName(r.bucketMs)}: median and 95th percentile`,
    xLabels: rangeLabels(r, $('range-duration-chart')),
    tooltip: (i, b) =>
      `${bucketTime(r, r.from + i * r.bucketMs)}: median ${formatMs(b.duration.p50)}, p95 ${formatMs(b.duration.p95)}, p99 ${formatMs(b.duration.p99)} (${formatCount(b.duration.count)} timed)`,
  });
  drawBreakdowns($('range-breakdowns'), breakdowns(r.total));
}

/** Lists bucket `i`'s sign-ins (the first BUCKET_LIST, oldest first). */
async function listBucket(i) {
  const r = range;
  const bucket = r?.buckets[i];
  if (!bucket) return;
  cursor = i;
  drawRange();
  const [start, end] = bucketBounds(r, i);
  const section = $('bucket');
  const title = $('bucket-title');
  section.hidden = false;
  title.textContent = `${bucketTime(r, start)} – ${bucketTime(r, end + 1)}: loading…`;
  const request = rangeRequest;
  try {
    // Blobs sent with seconds are stored as seconds: read both spellings.
    const lists = await Promise.all(
      rawRanges(start, end).map((q) => client.fetchRange({ ...q, limit: BUCKET_LIST })),
    );
    if (request !== rangeRequest || cursor !== i) return;
    const docs = lists
      .flat()
      .sort((a, b) => timestampMs(a) - timestampMs(b))
      .slice(0, BUCKET_LIST);
    const list = $('bucket-list');
    list.replaceChildren(...docs.map((doc) => feedRow(doc._id, doc, { withDate: spansDays(r) })));
    title.textContent = `${bucketTime(r, start)} – ${bucketTime(r, end + 1)} · showing ${formatCount(docs.length)} of ${formatCount(bucket.count)} sign-ins, oldest first`;
    section.dataset.count = String(bucket.count);
  } catch (e) {
    title.textContent = `Could not list the sign-ins: ${e.message}`;
  }
}

$('range-rate-chart').addEventListener('click', (event) => {
  const hit = event.target.closest('rect.hit');
  if (hit) listBucket(Number(hit.dataset.index));
});

// The keyboard walks the non-empty buckets; Enter lists one.
$('range-rate-chart').addEventListener('keydown', (event) => {
  if (!range) return;
  const filled = range.buckets.map((b, i) => (b ? i : -1)).filter((i) => i >= 0);
  if (filled.length === 0) return;
  const at = filled.indexOf(cursor);
  let next = null;
  if (event.key === 'ArrowRight') next = filled[Math.min(filled.length - 1, at + 1)];
  else if (event.key === 'ArrowLeft') next = filled[at <= 0 ? 0 : at - 1];
  else if (event.key === 'Home') next = filled[0];
  else if (event.key === 'End') next = filled[filled.length - 1];
  else if ((event.key === 'Enter' || event.key === ' ') && cursor >= 0) {
    event.preventDefault();
    listBucket(cursor);
    return;
  }
  if (next === null || next === undefined) return;
  event.preventDefault();
  cursor = next;
  drawRange();
  const r = range;
  const [s, e] = bucketBounds(r, cursor);
  // Said aloud by the live region under the chart.
  $('range-pick-help').textContent =
    `${bucketTime(r, s)} – ${bucketTime(r, e + 1)}: ${formatCount(r.counts[cursor])} sign-ins. Enter lists them.`;
});

// ------------------------------------------------------------------ layout

// The SVGs are drawn for their width: redraw when it changes.
let resizeTimer = null;
addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    forgetWidths();
    render();
    if (range && !$('range-result').hidden) drawRange();
  }, 100);
});

// The API summary is folded away; a link to #api opens it.
function openApiFromHash() {
  if (location.hash === '#api') $('api').open = true;
}
addEventListener('hashchange', openApiFromHash);
openApiFromHash();

follow();
showState();
render();
firstPaint();

// What the dashboard makes of the server's KPIs: the rollups answered by
// GET …/stats (a window, by bucket) and the live frames of …/stats/stream,
// both computed by the server from every stored sign-in. The page never
// computes a KPI from the blobs it happens to receive. No DOM here, so
// Node can test it too (tests/js/stats.test.mjs).

/** The live windows the server's frames carry, by name, in seconds. */
export const WINDOWS = [
  ['10s', 10],
  ['5m', 300],
  ['1h', 3600],
];

/** Seconds in the per-second rate series (the server's `per_second`). */
export const RATE_SECONDS = 300;

/**
 * How far the live rollup may fall short of the stored one for the same
 * window and still be taken as complete: sign-ins stored but not yet
 * counted live (in flight for milliseconds) are a sliver; a server that
 * started within the window misses everything before its start.
 */
export function liveTolerance(storedCount) {
  return 5 + Math.ceil(storedCount * 0.01);
}

/** The sign-in duration: the time of the last `event_stream` entry, in ms. */
export function durationOf(doc) {
  const events = doc && doc.event_stream;
  if (!Array.isArray(events) || events.length === 0) return null;
  const last = events[events.length - 1];
  const ms = Array.isArray(last) ? last[1] : null;
  return typeof ms === 'number' && Number.isFinite(ms) ? ms : null;
}

/** `timestamp` in ms: producers send seconds or milliseconds (as the server reads them). */
export function timestampMs(doc) {
  const t = Number(doc && doc.timestamp);
  if (!Number.isFinite(t)) return NaN;
  return t < 1e11 ? t * 1000 : t;
}

/** "Firefox 17 · Windows", from `user_agent`. */
export function agentOf(doc) {
  const ua = (doc && doc.user_agent) || {};
  const browser = [ua.browser, ua.version].filter((v) => v !== undefined && v !== null).join(' ');
  return [browser, ua.os].filter(Boolean).join(' · ') || 'unknown agent';
}

/**
 * The breakdowns shown: the page's key (kept from the page before rollups,
 * so links and tests keep working), the server's field, a label.
 */
export const DIMENSIONS = [
  { key: 'browser', field: 'browser', label: 'Browser' },
  { key: 'os', field: 'os', label: 'Operating system' },
  { key: 'language', field: 'language', label: 'Language' },
  { key: 'email_type', field: 'email_type', label: 'Email type' },
  { key: 'new_account', field: 'account', label: 'Account' },
];

/** A summary of no sign-ins, shaped like the server's. */
export function emptySummary() {
  const s = { count: 0, duration: { count: 0, p50: null, p95: null, p99: null, max: null } };
  for (const d of DIMENSIONS) s[d.field] = {};
  return s;
}

/**
 * The `top` largest of `{value: count}` as [value, count], largest first,
 * the rest summed into "other" (with the server's own "other", which holds
 * values past its bound of distinct ones).
 */
export function topRows(counts, top = 6) {
  const rows = Object.entries(counts || {}).filter(([, n]) => n > 0);
  rows.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  if (rows.length <= top) return rows;
  const kept = rows.filter(([v]) => v !== 'other').slice(0, top - 1);
  const shown = new Set(kept.map(([v]) => v));
  const rest = rows.filter(([v]) => !shown.has(v)).reduce((sum, [, n]) => sum + n, 0);
  return [...kept, ['other', rest]];
}

/** Per dimension of a summary: {key, label, rows: [[value, count]]}. */
export function breakdowns(summary) {
  return DIMENSIONS.map((d) => ({ key: d.key, label: d.label, rows: topRows(summary?.[d.field]) }));
}

/** Most buckets a series is filled to: the server answers at most 10,000. */
const MAX_SERIES = 10_001;

/**
 * A rollup's buckets as a series with the empty ones filled in:
 * `{from, to, bucketMs, counts, buckets}` where `buckets[i]` is the
 * server's bucket (or null) starting at `from + i * bucketMs`.
 */
export function fillSeries(rollup) {
  const bucketMs = rollup.bucket_ms;
  const from = rollup.start;
  const n = Math.min(MAX_SERIES, Math.max(1, Math.floor((rollup.end - from) / bucketMs) + 1));
  const counts = new Array(n).fill(0);
  const buckets = new Array(n).fill(null);
  for (const b of rollup.buckets || []) {
    const i = Math.floor((b.start - from) / bucketMs);
    if (i >= 0 && i < n) {
      counts[i] = b.count;
      buckets[i] = b;
    }
  }
  return { from, to: rollup.end, bucketMs, counts, buckets };
}

/**
 * The window of `seconds` ending at `nowMs`, cut as the server cuts its
 * live windows: whole seconds, the current one included.
 */
export function windowBounds(nowMs, seconds) {
  const now = Math.floor(nowMs / 1000) * 1000;
  return { start: now - (seconds - 1) * 1000, end: nowMs };
}

/**
 * `series` ({start, counts}, by second) moved to end with the second of
 * `nowMs`, `length` seconds long; seconds it does not cover count 0 and,
 * where `floor` covers them, at least what `floor` says.
 */
export function secondsEndingAt(nowMs, length, series, floor = null) {
  const start = Math.floor(nowMs / 1000) * 1000 - (length - 1) * 1000;
  const counts = new Array(length).fill(0);
  for (const source of [series, floor]) {
    if (!source) continue;
    for (let i = 0; i < length; i++) {
      const j = (start + i * 1000 - source.start) / 1000;
      if (j >= 0 && j < source.counts.length) counts[i] = Math.max(counts[i], source.counts[j]);
    }
  }
  return { start, counts };
}

/**
 * `stored` plus what the live side gained since `then` (the live window at
 * the instant `stored` was cut): counts and breakdowns move with every
 * frame between two stored answers. Percentiles cannot be added: they stay
 * the stored ones until the next answer.
 */
export function advance(stored, now, then) {
  const out = { count: Math.max(0, stored.count + (now.count ?? 0) - (then.count ?? 0)), duration: stored.duration };
  for (const { field } of DIMENSIONS) {
    const merged = {};
    const values = new Set([...Object.keys(stored[field] || {}), ...Object.keys(now[field] || {})]);
    for (const v of values) {
      const n = (stored[field]?.[v] ?? 0) + (now[field]?.[v] ?? 0) - (then[field]?.[v] ?? 0);
      if (n > 0) merged[v] = n;
    }
    out[field] = merged;
  }
  return out;
}

/**
 * The dashboard's KPIs, from two sources the page keeps side by side:
 *
 * - stored: `GET …/stats` answers for each window, fetched at first paint,
 *   after each (re)connect of the live stream, and every few seconds while
 *   the live side is short;
 * - live: the newest `stats` frame (the server's in-memory rollup, which
 *   begins when that server started).
 *
 * A window is shown from the live frames once a stored answer for the same
 * window at the same instant (the frame's `at`) shows the live rollup is
 * complete there; until then (before the first frame, or after connecting
 * to a server that started within the window) from the stored answer,
 * moved on by what the live side gained since (see `advance`).
 */
export class Kpis {
  constructor() {
    /** The newest live frame, or null. */
    this.frame = null;
    /** Per window name: {at, total, live} of the newest stored answer, `live` the live window at the same instant (if known). */
    this.stored = {};
    /** Per second of the last 5 minutes as stored: {start, counts}, or null. */
    this.storedSeconds = null;
    /** Per window name: true once the live frames are known complete for it. */
    this.trusted = {};
  }

  /**
   * Forgets that the live side was complete: after a reconnect it may be
   * another server, or a restarted one. What was shown live is kept as the
   * stored figure until a new answer comes, so a page that lost its server
   * keeps showing its last figures (marked stale), not older ones.
   */
  untrust() {
    // Frozen as shown: the next server's frames count from its own start,
    // and must not move figures until a stored answer is compared with them.
    const shown = WINDOWS.map(([name]) => [name, this.window(name)]);
    for (const [name, w] of shown) {
      if (w.source !== 'none') this.stored[name] = { at: w.at, total: w.summary, live: null };
    }
    if (this.frame) this.storedSeconds = this.rate(this.frame.at);
    this.trusted = {};
  }

  setFrame(frame) {
    this.frame = frame;
  }

  /** A stored answer for window `name`, asked for the window ending at `at`. */
  setStored(name, answer, at, live = null) {
    this.stored[name] = { at, total: answer.total, live };
    if (name === '5m' && answer.bucket_ms === 1000) {
      const filled = fillSeries(answer);
      this.storedSeconds = { start: filled.from, counts: filled.counts };
    }
  }

  /**
   * Compares a stored answer for `name` with `frame`, the live frame at
   * whose `at` that window was asked for: trusts the live side when it is
   * complete. Returns whether it is.
   */
  check(name, frame, answer) {
    this.setStored(name, answer, frame.at, frame.windows?.[name] ?? null);
    const live = frame.windows?.[name]?.count ?? 0;
    const stored = answer.total?.count ?? 0;
    this.trusted[name] = live >= stored - liveTolerance(stored);
    return this.trusted[name];
  }

  /** Window `name` as shown: {summary, source: 'live' | 'stored' | 'none', at}. */
  window(name) {
    if (this.frame && this.trusted[name]) {
      return { summary: this.frame.windows[name] || emptySummary(), source: 'live', at: this.frame.at };
    }
    const stored = this.stored[name];
    if (stored && stored.live && this.frame?.windows?.[name] && this.frame.at >= stored.at) {
      const summary = advance(stored.total, this.frame.windows[name], stored.live);
      return { summary, source: 'stored', at: this.frame.at };
    }
    if (stored) return { summary: stored.total, source: 'stored', at: stored.at };
    return { summary: emptySummary(), source: 'none', at: null };
  }

  /** The newest time any figure is from (ms), or null. */
  asOf() {
    const times = [this.frame?.at, ...Object.values(this.stored).map((s) => s.at)];
    const known = times.filter((t) => Number.isFinite(t));
    return known.length ? Math.max(...known) : null;
  }

  /**
   * Sign-ins per second over the last 5 minutes, ending at the newest
   * frame (or `nowMs` before there is one): live counts, never below what
   * the store had for a second while the live side is short.
   */
  rate(nowMs) {
    const live = this.frame?.per_second;
    const floor = this.trusted['5m'] && live ? null : this.storedSeconds;
    const end = live ? this.frame.at : nowMs;
    return secondsEndingAt(end, RATE_SECONDS, live, floor);
  }
}

/** Bucket widths the range explorer asks for, in seconds: round on a clock. */
const RANGE_BUCKETS_S = [
  1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 7 * 86_400,
];

/** The narrowest round bucket giving at most `target` buckets over `spanMs`. */
export function chooseBucket(spanMs, target = 150) {
  const s = RANGE_BUCKETS_S.find((b) => spanMs / (b * 1000) <= target);
  return (s ?? RANGE_BUCKETS_S[RANGE_BUCKETS_S.length - 1]) * 1000;
}

/** 10000 → "10 s", 7200000 → "2 h", 86400000 → "1 day". */
export function bucketName(ms) {
  const s = ms / 1000;
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${s / 60} min`;
  if (s < 86_400) return `${s / 3600} h`;
  return s === 86_400 ? '1 day' : `${s / 86_400} days`;
}

/**
 * The raw `timestamp` ranges holding the blobs of `startMs..=endMs`: the
 * milliseconds, and the seconds that producers sending seconds used (the
 * server places those by their time in rollups, but a range read compares
 * the stored number).
 */
export function rawRanges(startMs, endMs) {
  const ranges = [];
  // Below 1e11 a stored number is read as seconds, whatever the window.
  if (Math.max(startMs, 1e11) <= endMs) ranges.push({ start: Math.max(startMs, 1e11), end: endMs });
  const first = Math.ceil(startMs / 1000);
  const last = Math.floor(endMs / 1000);
  if (first <= last && first < 1e11) ranges.push({ start: first, end: Math.min(last, 1e11 - 1) });
  return ranges;
}

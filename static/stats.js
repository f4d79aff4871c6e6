// What the dashboard computes from sign-in blobs (shaped like
// tests/fixtures/login-sequence.json), with bounded memory: a sliding window
// of the last N sign-ins for distributions and breakdowns, and fixed
// per-second buckets for the rate. No DOM here, so Node can test it too.

/** Distinct values kept per breakdown; past it they count as "other", so
 * a producer sending random user agents cannot grow our memory. */
const MAX_DISTINCT = 200;

/** The sign-in duration: the time of the last `event_stream` entry, in ms. */
export function durationOf(doc) {
  const events = doc && doc.event_stream;
  if (!Array.isArray(events) || events.length === 0) return null;
  const last = events[events.length - 1];
  const ms = Array.isArray(last) ? last[1] : null;
  return typeof ms === 'number' && Number.isFinite(ms) ? ms : null;
}

/** `timestamp` in ms: producers send seconds or milliseconds. */
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

const text = (v) => (v === undefined || v === null || v === '' ? 'unknown' : String(v));

/** The breakdowns shown, each a label and how to read it from a blob. */
export const DIMENSIONS = [
  { key: 'browser', label: 'Browser', of: (d) => text(d.user_agent && d.user_agent.browser) },
  { key: 'os', label: 'Operating system', of: (d) => text(d.user_agent && d.user_agent.os) },
  { key: 'language', label: 'Language', of: (d) => text(d.language) },
  { key: 'email_type', label: 'Email type', of: (d) => text(d.email_type) },
  {
    key: 'new_account',
    label: 'Account',
    of: (d) =>
      d.new_account === true ? 'new' : d.new_account === false ? 'returning' : 'unknown',
  },
];

/** The value at quantile `q` of an ascending array (nearest rank). */
export function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.ceil(q * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))];
}

/** Counts per value of one dimension, bounded to MAX_DISTINCT values. */
class Tally {
  constructor() {
    this.counts = new Map();
  }

  /** Adds one; returns the key it was counted under (to remove it later). */
  add(value) {
    const key = this.counts.has(value) || this.counts.size < MAX_DISTINCT ? value : 'other';
    this.counts.set(key, (this.counts.get(key) || 0) + 1);
    return key;
  }

  remove(key) {
    const n = (this.counts.get(key) || 0) - 1;
    if (n > 0) this.counts.set(key, n);
    else this.counts.delete(key);
  }

  /** The `top` largest as [value, count], the rest summed into "other". */
  rows(top = 6) {
    const rows = [...this.counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    if (rows.length <= top) return rows;
    const rest = rows.slice(top - 1).reduce((sum, [, n]) => sum + n, 0);
    return [...rows.slice(0, top - 1), ['other', rest]];
  }
}

/** Distributions and breakdowns over the last `capacity` sign-ins. */
export class SlidingWindow {
  constructor(capacity) {
    this.capacity = capacity;
    this.records = new Array(capacity);
    this.next = 0;
    this.size = 0;
    this.tallies = DIMENSIONS.map(() => new Tally());
  }

  add(doc) {
    if (this.size === this.capacity) {
      const old = this.records[this.next];
      old.keys.forEach((key, i) => this.tallies[i].remove(key));
    } else {
      this.size += 1;
    }
    this.records[this.next] = {
      keys: DIMENSIONS.map((dim, i) => this.tallies[i].add(dim.of(doc))),
      duration: durationOf(doc),
    };
    this.next = (this.next + 1) % this.capacity;
  }

  /** Durations in ascending order, with their median and p95. */
  durations() {
    const sorted = [];
    for (let i = 0; i < this.size; i++) {
      const d = this.records[i].duration;
      if (d !== null) sorted.push(d);
    }
    sorted.sort((a, b) => a - b);
    return { sorted, median: quantile(sorted, 0.5), p95: quantile(sorted, 0.95) };
  }

  /** Per dimension: {key, label, rows: [[value, count]]}. */
  breakdowns() {
    return DIMENSIONS.map((dim, i) => ({ key: dim.key, label: dim.label, rows: this.tallies[i].rows() }));
  }
}

/** Sign-ins per second over the last `seconds`, by blob timestamp. */
export class Rate {
  constructor(seconds, nowMs = Date.now()) {
    this.seconds = seconds;
    this.buckets = new Uint32Array(seconds);
    /** The second (since the epoch) of the newest bucket. */
    this.newest = Math.floor(nowMs / 1000);
  }

  /** Moves the window so that `second` is its newest bucket. */
  advance(second) {
    const steps = second - this.newest;
    if (steps <= 0) return;
    if (steps >= this.seconds) this.buckets.fill(0);
    else for (let s = 1; s <= steps; s++) this.buckets[(this.newest + s) % this.seconds] = 0;
    this.newest = second;
  }

  /** Counts a sign-in at `ms`; a clock a little ahead counts as now, an old one not at all. */
  add(ms, nowMs = Date.now()) {
    this.advance(Math.floor(nowMs / 1000));
    const second = Math.min(Math.floor(ms / 1000), this.newest);
    if (!(second > this.newest - this.seconds)) return;
    this.buckets[second % this.seconds] += 1;
  }

  /** Oldest first, ending with the current second. */
  series(nowMs = Date.now()) {
    this.advance(Math.floor(nowMs / 1000));
    const out = new Array(this.seconds);
    for (let i = 0; i < this.seconds; i++) {
      out[i] = this.buckets[(this.newest - this.seconds + 1 + i + this.seconds) % this.seconds];
    }
    return out;
  }
}

/** Bucket widths a range chart may use, so axis labels stay round. */
const BUCKETS_MS = [1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400].map(
  (s) => s * 1000,
);

/** Everything the range explorer shows for `docs` between `startMs` and `endMs`. */
export function summarizeRange(docs, startMs, endMs, maxBuckets = 120) {
  const window = new SlidingWindow(Math.max(1, docs.length));
  let lo = Infinity;
  let hi = -Infinity;
  for (const doc of docs) {
    window.add(doc);
    const t = timestampMs(doc);
    if (t < lo) lo = t;
    if (t > hi) hi = t;
  }
  const from = Number.isFinite(startMs) ? startMs : lo;
  const to = Number.isFinite(endMs) ? endMs : hi;
  const span = Math.max(1000, to - from);
  const bucketMs = BUCKETS_MS.find((b) => span / b <= maxBuckets) || BUCKETS_MS[BUCKETS_MS.length - 1];
  const first = Math.floor(from / bucketMs) * bucketMs;
  const series = new Array(Math.max(1, Math.ceil((to - first + 1) / bucketMs))).fill(0);
  for (const doc of docs) {
    const i = Math.floor((timestampMs(doc) - first) / bucketMs);
    if (i >= 0 && i < series.length) series[i] += 1;
  }
  return {
    count: docs.length,
    from: first,
    to,
    bucketMs,
    series,
    durations: window.durations(),
    breakdowns: window.breakdowns(),
  };
}

// What the dashboard makes of the server's KPIs (static/stats.js): plain
// functions and the Kpis model, no server.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  durationOf,
  timestampMs,
  topRows,
  breakdowns,
  emptySummary,
  fillSeries,
  windowBounds,
  secondsEndingAt,
  Kpis,
  chooseBucket,
  bucketName,
  rawRanges,
} from '../../static/stats.js';
import { loginBlob } from './server.mjs';

test('duration is the last event_stream timing; timestamps in seconds become ms', () => {
  assert.equal(durationOf(loginBlob(1, 12)), 4512);
  assert.equal(durationOf({ event_stream: [] }), null);
  assert.equal(durationOf({}), null);
  assert.equal(timestampMs({ timestamp: 1_333_046_104 }), 1_333_046_104_000);
  assert.equal(timestampMs({ timestamp: 1_333_046_104_322 }), 1_333_046_104_322);
});

test('breakdown rows: the largest first, the rest (and the server\'s own "other") summed', () => {
  const counts = { a: 5, b: 9, c: 1, d: 3, e: 2, f: 4, g: 7, other: 6 };
  const rows = topRows(counts, 4);
  assert.deepEqual(rows, [['b', 9], ['g', 7], ['a', 5], ['other', 6 + 4 + 3 + 2 + 1]]);
  assert.equal(rows.reduce((s, [, n]) => s + n, 0), 37, 'nothing lost');
  assert.deepEqual(topRows({ x: 1, y: 0 }), [['x', 1]]);
  const list = breakdowns({ ...emptySummary(), account: { new: 2, returning: 3 } });
  assert.deepEqual(list.map((b) => b.key), ['browser', 'os', 'language', 'email_type', 'new_account']);
  assert.deepEqual(list[4].rows, [['returning', 3], ['new', 2]]);
});

test('a rollup becomes a series with its empty buckets filled', () => {
  const rollup = {
    start: 10_000,
    end: 69_999,
    bucket_ms: 10_000,
    buckets: [
      { start: 20_000, count: 3 },
      { start: 50_000, count: 1 },
    ],
  };
  const s = fillSeries(rollup);
  assert.deepEqual(s.counts, [0, 3, 0, 0, 1, 0]);
  assert.equal(s.buckets[1].count, 3);
  assert.equal(s.buckets[0], null);
});

test('windows are cut as the live rollup cuts them, whole seconds ending now', () => {
  assert.deepEqual(windowBounds(1_000_500, 10), { start: 991_000, end: 1_000_500 });
  const shifted = secondsEndingAt(10_500, 3, { start: 7000, counts: [1, 2, 3] }, { start: 8000, counts: [5, 0, 0] });
  assert.deepEqual(shifted, { start: 8000, counts: [5, 3, 0] });
});

/** A live frame at `at` whose windows hold `counts` sign-ins. */
function frameAt(at, counts, perSecond = new Array(300).fill(0)) {
  const windows = {};
  for (const [name, n] of Object.entries(counts)) windows[name] = { ...emptySummary(), count: n };
  const start = Math.floor(at / 1000) * 1000 - 299_000;
  return { type: 'stats', at, windows, per_second: { start, counts: perSecond } };
}

const stored = (n, bucketMs = 3_600_000, start = 0, end = 0) => ({
  start,
  end,
  bucket_ms: bucketMs,
  total: { ...emptySummary(), count: n },
  buckets: [],
});

test('before any frame, every window is shown from the store', () => {
  const kpis = new Kpis();
  assert.equal(kpis.window('5m').source, 'none');
  kpis.setStored('5m', stored(200), 1000);
  assert.deepEqual([kpis.window('5m').source, kpis.window('5m').summary.count], ['stored', 200]);
});

test('a complete live window is followed live; a short one (a restarted server) from the store', () => {
  const kpis = new Kpis();
  const at = 1_000_000_000;
  // The live side has what the store has, but a sliver in flight: live.
  const frame = frameAt(at, { '10s': 10, '5m': 198, '1h': 5 });
  kpis.setFrame(frame);
  assert.equal(kpis.check('5m', frame, stored(200)), true);
  // The hour holds 300 stored sign-ins the server did not count live: it started within the hour.
  assert.equal(kpis.check('1h', frame, stored(300)), false);
  kpis.setFrame(frameAt(at + 1000, { '10s': 11, '5m': 199, '1h': 6 }));
  assert.deepEqual([kpis.window('5m').source, kpis.window('5m').summary.count], ['live', 199]);
  // Stored, moved on by the one sign-in the live side gained since.
  assert.deepEqual([kpis.window('1h').source, kpis.window('1h').summary.count], ['stored', 301]);
  // A reconnect forgets the trust, but keeps the figures shown last...
  kpis.untrust();
  assert.deepEqual([kpis.window('5m').source, kpis.window('5m').summary.count], ['stored', 199]);
  assert.equal(kpis.window('1h').summary.count, 301);
  // ...also once a restarted server's frames, counting from its start, arrive.
  kpis.setFrame(frameAt(at + 5000, { '10s': 0, '5m': 0, '1h': 0 }));
  assert.equal(kpis.window('5m').summary.count, 199);
  assert.equal(kpis.window('1h').summary.count, 301);
});

test('between two stored answers, counts and breakdowns move with the live side', () => {
  const kpis = new Kpis();
  const at = 1_500_000_000;
  const then = { ...emptySummary(), count: 2, browser: { Firefox: 2 } };
  const frame = { ...frameAt(at, { '10s': 0, '5m': 0, '1h': 0 }) };
  frame.windows['1h'] = then;
  kpis.setFrame(frame);
  const answer = stored(50);
  answer.total.browser = { Firefox: 30, Chrome: 20 };
  answer.total.duration = { count: 50, p50: 4000, p95: 5000, p99: 5100, max: 6000 };
  assert.equal(kpis.check('1h', frame, answer), false);
  const later = frameAt(at + 3000, { '10s': 3, '5m': 3, '1h': 4 });
  later.windows['1h'] = { ...emptySummary(), count: 4, browser: { Firefox: 2, Safari: 2 } };
  kpis.setFrame(later);
  const shown = kpis.window('1h').summary;
  assert.equal(shown.count, 52);
  assert.deepEqual(shown.browser, { Firefox: 30, Chrome: 20, Safari: 2 });
  assert.equal(shown.duration.p50, 4000, 'percentiles stay the stored ones');
});

test('the rate chart never shows less than the store had while the live side is short', () => {
  const kpis = new Kpis();
  const at = 2_000_000_000;
  const floor = new Array(300).fill(0);
  floor[10] = 4; // a second before the server started: stored, not live
  const answer = { ...stored(4, 1000, Math.floor(at / 1000) * 1000 - 299_000, at), buckets: [] };
  answer.buckets = [{ start: answer.start + 10_000, count: 4 }];
  const live = new Array(300).fill(0);
  live[299] = 2;
  const frame = frameAt(at, { '10s': 2, '5m': 2, '1h': 2 }, live);
  kpis.setFrame(frame);
  assert.equal(kpis.check('5m', frame, answer), true, '2 short of 4 is within the tolerance');
  assert.deepEqual(kpis.rate(at).counts.reduce((a, b) => a + b, 0), 2, 'trusted: live only');
  kpis.trusted['5m'] = false;
  const rate = kpis.rate(at).counts;
  assert.equal(rate[10], 4);
  assert.equal(rate[299], 2);
});

test('range buckets are round and at most ~150 a window', () => {
  const min = 60_000;
  assert.equal(chooseBucket(15 * min), 10_000);
  assert.equal(chooseBucket(60 * min), 30_000);
  assert.equal(chooseBucket(24 * 60 * min), 600_000);
  assert.equal(chooseBucket(7 * 24 * 60 * min), 2 * 3_600_000);
  assert.equal(chooseBucket(30 * 24 * 60 * min), 6 * 3_600_000);
  assert.deepEqual([10_000, 120_000, 7_200_000, 86_400_000].map(bucketName), ['10 s', '2 min', '2 h', '1 day']);
});

test('a bucket\'s blobs are read in both spellings of their timestamps', () => {
  assert.deepEqual(rawRanges(1_700_000_000_000, 1_700_000_009_999), [
    { start: 1_700_000_000_000, end: 1_700_000_009_999 },
    { start: 1_700_000_000, end: 1_700_000_009 },
  ]);
  // Part of a second at each end: no whole second in seconds.
  assert.deepEqual(rawRanges(1_700_000_000_200, 1_700_000_000_800), [
    { start: 1_700_000_000_200, end: 1_700_000_000_800 },
  ]);
});

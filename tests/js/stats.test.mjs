// The dashboard's statistics (static/stats.js): plain functions, no server.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { quantile, durationOf, timestampMs, SlidingWindow, Rate, summarizeRange } from '../../static/stats.js';
import { loginBlob } from './server.mjs';

test('duration is the last event_stream timing; timestamps in seconds become ms', () => {
  assert.equal(durationOf(loginBlob(1, 12)), 4512);
  assert.equal(durationOf({ event_stream: [] }), null);
  assert.equal(durationOf({}), null);
  assert.equal(timestampMs({ timestamp: 1_333_046_104 }), 1_333_046_104_000);
  assert.equal(timestampMs({ timestamp: 1_333_046_104_322 }), 1_333_046_104_322);
});

test('median and p95 by nearest rank', () => {
  const sorted = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(quantile(sorted, 0.5), 50);
  assert.equal(quantile(sorted, 0.95), 95);
  assert.equal(quantile([7], 0.95), 7);
  assert.equal(quantile([], 0.5), null);
});

test('the sliding window forgets the oldest sign-ins, counts included', () => {
  const window = new SlidingWindow(3);
  for (const n of [0, 1, 2, 3]) window.add({ ...loginBlob(n, n), user_agent: { browser: `B${n}` } });
  assert.equal(window.size, 3);
  const browsers = window.breakdowns().find((b) => b.key === 'browser').rows;
  assert.deepEqual(browsers, [['B1', 1], ['B2', 1], ['B3', 1]]);
  assert.deepEqual(window.durations().sorted, [4501, 4502, 4503]);
  const accounts = window.breakdowns().find((b) => b.key === 'new_account').rows;
  assert.deepEqual(accounts, [['returning', 3]]); // n = 0, the only new account, has left
});

test('breakdowns stay bounded whatever producers send', () => {
  const window = new SlidingWindow(1000);
  for (let n = 0; n < 1000; n++) window.add({ timestamp: n, language: `lang-${n}` });
  const rows = window.breakdowns().find((b) => b.key === 'language').rows;
  assert.equal(rows.length, 6);
  assert.equal(rows.reduce((sum, [, c]) => sum + c, 0), 1000);
});

test('the rate counts per second by timestamp and forgets what left the window', () => {
  const now = 1_000_000_000;
  const rate = new Rate(10, now);
  rate.add(now, now);
  rate.add(now - 500, now); // the second before
  rate.add(now - 3000, now);
  rate.add(now - 60_000, now); // older than the window: not counted
  rate.add(now + 5000, now); // a clock ahead counts as now
  assert.deepEqual(rate.series(now), [0, 0, 0, 0, 0, 0, 1, 0, 1, 2]);
  assert.deepEqual(rate.series(now + 8000), [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(rate.series(now + 60_000), new Array(10).fill(0));
});

test('a range is bucketed into at most the asked number of round buckets', () => {
  const start = 1_700_000_000_000;
  const docs = Array.from({ length: 600 }, (_, i) => loginBlob(start + i * 1000, i));
  const range = summarizeRange(docs, start, start + 600_000, 120);
  assert.equal(range.count, 600);
  assert.equal(range.bucketMs, 5000); // 120 buckets of 5 s
  assert.ok(range.series.length <= 121);
  assert.equal(range.series.reduce((a, b) => a + b, 0), 600);
});

// The KPI side of the JavaScript client against a real kpiggybank:
// stats() for a window of known blobs, followStats() seeing new sign-ins
// arrive, reconnecting across a server restart, and the sample option of
// followChanges passed to a server that may not know it yet.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import KPiggybank, { KPiggybankError } from '../../static/kpiggybank.js';
import { Server, loginBlob, until } from './server.mjs';

/** Midnight of a day in 2012, in ms: far from "now", so live windows ignore it. */
const DAY = 1_333_065_600_000;

/** Restarts and a few frames take seconds, never twenty. */
const OPTIONS = { timeout: 20_000 };

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server?.stop();
});

/**
 * 120 sign-ins over two minutes of DAY, one per second: durations 4500 + n
 * ms (loginBlob), new accounts every fourth, every tenth timestamp in
 * seconds (the server places those by their time).
 */
function dayBlobs() {
  return Array.from({ length: 120 }, (_, n) => {
    const blob = loginBlob(DAY + n * 1000, n);
    if (n % 10 === 0) blob.timestamp = (DAY + n * 1000) / 1000;
    blob.user_agent.browser = n % 3 === 0 ? 'Firefox' : 'Chrome';
    return blob;
  });
}

test('stats() counts a window of known blobs, by bucket, with Promises and callbacks', OPTIONS, async () => {
  const kp = new KPiggybank(server.url);
  await kp.saveData(dayBlobs());
  const kpis = await kp.stats({ start: DAY, end: DAY + 3_600_000 - 1, bucket: '1m' });
  assert.equal(kpis.bucket_ms, 60_000);
  assert.equal(kpis.total.count, 120);
  assert.equal(kpis.total.browser.Firefox, 40);
  assert.equal(kpis.total.browser.Chrome, 80);
  assert.equal(kpis.total.account.new, 30);
  assert.equal(kpis.total.account.returning, 90);
  assert.equal(kpis.total.language.en_US, 120);
  // Durations 4500..4619 ms: the percentiles are within the stated error.
  const error = kpis.percentiles.relative_error;
  assert.ok(Math.abs(kpis.total.duration.p50 - 4559) <= 4559 * error + 1, `${kpis.total.duration.p50}`);
  assert.equal(kpis.total.duration.max, 4619);
  // Only the two minutes that hold sign-ins are listed, 60 each.
  assert.deepEqual(
    kpis.buckets.map((b) => [b.start, b.count]),
    [
      [DAY, 60],
      [DAY + 60_000, 60],
    ],
  );

  // A Date is a time; a bucket in ms is a width; the callback style works.
  const viaCallback = await new Promise((resolve, reject) =>
    kp.stats({ start: new Date(DAY + 30_000), end: DAY + 89_999, bucket: 10_000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
  assert.equal(viaCallback.bucket_ms, 10_000);
  assert.equal(viaCallback.total.count, 60);
  assert.equal(viaCallback.buckets.length, 6);

  // Nothing given: the window of every stored blob, its bucket chosen.
  const all = await kp.stats();
  assert.equal(all.total.count, 120);
  assert.ok(all.buckets.length <= 121, `${all.buckets.length} buckets`);
});

test('stats() errors are KPiggybankErrors naming the problem', OPTIONS, async () => {
  const kp = new KPiggybank(server.url);
  await assert.rejects(kp.stats({ bucket: '1w' }), (e) => {
    assert.ok(e instanceof KPiggybankError);
    assert.equal(e.status, 400);
    assert.equal(e.code, 'bad_param');
    assert.match(e.message, /bucket/);
    return true;
  });
  const err = await new Promise((resolve) => kp.stats({ start: 10, end: 5 }, (e) => resolve(e)));
  assert.equal(err.code, 'bad_param');
  assert.match(err.message, /start/);
  // Too many buckets for one answer: the server says to ask for wider ones.
  await assert.rejects(kp.stats({ start: 0, end: DAY, bucket: '1s' }), /buckets/);
  // A width in ms that is not whole seconds never reaches the server.
  await assert.rejects(kp.stats({ bucket: 1500 }), RangeError);
  const nobody = new KPiggybank('http://127.0.0.1:9');
  await assert.rejects(nobody.stats(), (e) => {
    assert.equal(e.code, 'unreachable');
    assert.match(e.message, /127\.0\.0\.1:9/);
    return true;
  });
});

/** A stats feed and what it reported. */
function followStats(kp, options) {
  const feed = kp.followStats(options);
  const frames = [];
  const errors = [];
  const states = [];
  feed.on('stats', (f) => frames.push(f));
  feed.on('error', (e) => errors.push(e));
  feed.on('state', (s) => states.push(s));
  return { feed, frames, errors, states };
}

/** `n` sign-ins a few seconds old, by the server's clock (same machine). */
function recentBlobs(n, from) {
  const now = Date.now();
  return Array.from({ length: n }, (_, i) => loginBlob(now - 2000 - i * 10, from + i));
}

test('followStats() streams a frame a second and shows new sign-ins', OPTIONS, async () => {
  const kp = new KPiggybank(server.url);
  const { feed, frames, errors, states } = followStats(kp);
  try {
    const first = await feed.ready;
    assert.equal(first.type, 'stats');
    assert.equal(feed.state, 'live');
    assert.deepEqual(states, ['live']);
    assert.equal(first.per_second.counts.length, 300);
    assert.deepEqual(Object.keys(first.windows).sort(), ['10s', '1h', '5m']);
    const before = first.windows['5m'].count;

    await kp.saveData(recentBlobs(7, 0));
    await until('a frame with the 7 new sign-ins', () =>
      frames.some((f) => f.windows['5m'].count === before + 7 && f.windows['10s'].count >= 7),
    );
    const frame = frames.at(-1);
    assert.equal(frame.windows['5m'].browser.Foo, before + 7);
    assert.equal(frame.per_second.counts.reduce((a, b) => a + b, 0), before + 7);
    assert.equal(feed.frame, frame);
    // About a frame a second: not a burst, not a trickle.
    const span = frames.at(-1).at - frames[0].at;
    assert.ok(span >= (frames.length - 1) * 500, `${frames.length} frames in ${span} ms`);
    assert.equal(errors.length, 0, errors.map((e) => e.message).join('; '));
  } finally {
    feed.close();
  }
  assert.equal(feed.state, 'closed');
  const seen = frames.length;
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(frames.length, seen, 'no frame after close');
});

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`followStats() reconnects across a stop (${signal}) and a start on the same port`, OPTIONS, async () => {
    const restarted = await Server.start();
    const kp = new KPiggybank(restarted.url);
    const { feed, frames, errors, states } = followStats(kp);
    try {
      await feed.ready;
      await restarted.stopProcess(signal);
      await until('the drop and a failed attempt', () => errors.length >= 2, 10_000);
      assert.equal(feed.state, 'reconnecting');
      assert.ok(feed.retryAt > Date.now() - 3000, 'says when it tries again');
      assert.equal(errors.at(-1).code, 'unreachable');
      assert.ok(errors.at(-1).message.includes(restarted.addr), errors.at(-1).message);

      await restarted.startAgain();
      const seen = frames.length;
      await until('frames again', () => frames.length > seen && feed.state === 'live', 10_000);
      await kp.saveData(recentBlobs(3, 10));
      await until('the sign-ins stored after the restart', () =>
        frames.at(-1).windows['5m'].count === 3,
      );
      assert.deepEqual(states.slice(0, 2), ['live', 'reconnecting']);
      assert.equal(states.at(-1), 'live');
    } finally {
      feed.close();
      await restarted.stop();
    }
  });
}

test('followStats() over a WebSocket gets frames, over the socket or, from a server without stats there, the stream', OPTIONS, async () => {
  assert.ok(
    typeof globalThis.WebSocket === 'function',
    'no global WebSocket: run Node 20 with --experimental-websocket (scripts/test does)',
  );
  const kp = new KPiggybank(server.url);
  const { feed, frames, errors } = followStats(kp, { transport: 'websocket' });
  try {
    const first = await feed.ready;
    assert.equal(first.type, 'stats');
    await kp.saveData(recentBlobs(2, 20));
    const before = first.windows['1h'].count;
    await until('the new sign-ins', () => frames.at(-1).windows['1h'].count >= before + 2);
    // Today's server ignores `stats` on the socket: the feed says so once
    // and moves to the stream. A server that sends stats there keeps it.
    if (feed.transport === 'stream') {
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, 'unsupported');
    } else {
      assert.equal(feed.transport, 'websocket');
      assert.equal(errors.length, 0);
    }
  } finally {
    feed.close();
  }
});

test('followStats() refuses options it cannot honour', () => {
  const kp = new KPiggybank(server.url);
  assert.throws(() => kp.followStats({ transport: 'carrier pigeon' }), RangeError);
});

test('followChanges({sample}) asks for a sample; a server that predates it sends every change', OPTIONS, async () => {
  const kp = new KPiggybank(server.url);
  assert.throws(() => kp.followChanges({ sample: 0 }), RangeError);
  assert.throws(() => kp.followChanges({ sample: 2.5 }), RangeError);
  for (const transport of ['stream', ...(typeof WebSocket === 'function' ? ['websocket'] : [])]) {
    const feed = kp.followChanges({ transport, sample: 1000 });
    const seen = [];
    feed.on('change', (c) => seen.push(c));
    try {
      await feed.ready;
      const { ids } = await kp.saveData(recentBlobs(3, 30));
      await until(`the changes over the ${transport}`, () =>
        ids.every((id) => seen.some((c) => c.id === id)),
      );
    } finally {
      feed.close();
    }
  }
});

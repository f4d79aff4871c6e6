// The JavaScript client (static/kpiggybank.js) against a real kpiggybank.
// Run: node --test tests/js/   (after cargo build --bins)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import KPiggybank, { KPiggybankError } from '../../static/kpiggybank.js';
import { Server, loginBlob, until, withWebSocket } from './server.mjs';

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server?.stop();
});

test('the constructor takes host and port, or a base URL', () => {
  assert.equal(new KPiggybank('127.0.0.1', 4000).baseUrl, 'http://127.0.0.1:4000');
  assert.equal(new KPiggybank('localhost').baseUrl, 'http://localhost:3000');
  assert.equal(new KPiggybank('https://kpi.example/').baseUrl, 'https://kpi.example');
});

test('saveData, count and fetchRange with Promises and with callbacks', async () => {
  const [host, port] = [server.addr.split(':')[0], Number(server.port)];
  const kp = new KPiggybank(host, port);
  const base = 1_700_000_000_000;
  const saved = await kp.saveData(loginBlob(base, 1));
  assert.equal(saved.ok, true);
  assert.equal(saved.ids.length, 1);

  // The original's callback style: (err, result).
  const viaCallback = await new Promise((resolve, reject) =>
    kp.saveData([loginBlob(base + 1, 2), loginBlob(base + 2, 3)], (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
  assert.equal(viaCallback.ids.length, 2);

  assert.equal(await kp.count(), 3);
  const counted = await new Promise((resolve) => kp.count((err, n) => resolve([err, n])));
  assert.deepEqual(counted, [null, 3]);

  const range = await kp.fetchRange({ start: base + 1, end: base + 2 });
  assert.deepEqual(
    range.map((b) => b.timestamp),
    [base + 1, base + 2],
  );
  assert.equal(range[0]._id, viaCallback.ids[0]);
  const newest = await kp.fetchRange({ limit: 1, descending: true });
  assert.equal(newest[0].timestamp, base + 2);
  // fetchRange(callback) without options: everything.
  const all = await new Promise((resolve) => kp.fetchRange((err, blobs) => resolve(blobs)));
  assert.equal(all.length, 3);
  assert.equal((await kp.last()).timestamp, base + 2);
});

test('errors name the problem, through the Promise and the callback', async () => {
  const kp = new KPiggybank(server.url);
  await assert.rejects(kp.saveData({ no: 'timestamp' }), (e) => {
    assert.ok(e instanceof KPiggybankError);
    assert.equal(e.status, 400);
    assert.match(e.message, /timestamp/);
    return true;
  });
  const err = await new Promise((resolve) =>
    kp.fetchRange({ start: 'soon' }, (e) => resolve(e)),
  );
  // Math.trunc('soon') is NaN: the server names the parameter.
  assert.equal(err.status, 400);
  assert.match(err.message, /start/);
});

test('followChanges delivers each change once and resumes by seq across a restart', async () => {
  const kp = new KPiggybank(server.url);
  // Node 20 has no global WebSocket: this is the HTTP ndjson stream.
  const feed = kp.followChanges({ transport: 'stream' });
  const seen = [];
  const states = [];
  feed.on('change', (c) => seen.push(c));
  feed.on('state', (s) => states.push(s));
  feed.on('error', () => {});
  try {
    await feed.ready;
    const before = await kp.saveData([loginBlob(1, 10), loginBlob(2, 11)]);
    await until('the first two changes', () => seen.length === 2);
    assert.deepEqual(
      seen.map((c) => c.id),
      before.ids,
    );
    assert.ok(seen.every((c) => c.type === 'change' && c.seq !== undefined && c.doc._id === c.id));

    await server.restart();
    // Posted as soon as the server is back, maybe before the feed reconnects:
    // the resume by seq must bring them, once.
    const after = await kp.saveData([loginBlob(3, 12), loginBlob(4, 13), loginBlob(5, 14)]);
    await until('the feed to reconnect', () => states.includes('reconnecting'));
    await until('the changes posted after the restart', () => seen.length >= 5, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      seen.map((c) => c.id),
      [...before.ids, ...after.ids],
      'every change exactly once, in order',
    );
    assert.equal(feed.state, 'live');
  } finally {
    feed.close();
  }
  assert.equal(feed.state, 'closed');
});

test('a stream feed refuses a replay it cannot do', () => {
  const kp = new KPiggybank(server.url);
  assert.throws(() => kp.followChanges({ transport: 'stream', last: 5 }), RangeError);
});

test('without a WebSocket, the feed follows the stream and names the flag that gives one', async () => {
  const kp = new KPiggybank(server.url);
  await withWebSocket(undefined, async () => {
    const flag = /--experimental-websocket/;
    assert.throws(
      () => kp.followChanges({ last: 5 }),
      (e) => e instanceof RangeError && flag.test(e.message) && /HTTP stream/.test(e.message),
    );
    assert.throws(
      () => kp.followChanges({ transport: 'websocket' }),
      (e) => e instanceof RangeError && flag.test(e.message),
    );
    const feed = kp.followChanges();
    try {
      assert.equal(feed.transport, 'stream');
      await feed.ready;
    } finally {
      feed.close();
    }
  });
});

// Browsers and Node 22+ have a global WebSocket; Node 20 needs
// --experimental-websocket, which scripts/test passes.
test(
  'followChanges over a WebSocket replays the last N, then resumes by seq across a restart',
  async () => {
    // Fails, never skips, without a WebSocket: a missing part is no pass.
    assert.ok(
      typeof globalThis.WebSocket === 'function',
      'no global WebSocket: run Node 20 with --experimental-websocket (scripts/test does)',
    );
    const kp = new KPiggybank(server.url);
    // The replay is of the last changes (by seq), whatever their timestamps.
    const stored = await kp.saveData([loginBlob(18, 18), loginBlob(19, 19)]);
    const feed = kp.followChanges({ last: 2 });
    assert.equal(feed.transport, 'websocket');
    const seen = [];
    const states = [];
    feed.on('change', (c) => seen.push(c.id));
    feed.on('state', (s) => states.push(s));
    feed.on('error', () => {});
    try {
      await until('the replay', () => seen.length === 2);
      assert.deepEqual(seen, stored.ids);
      const live = await kp.saveData(loginBlob(20, 20));
      await until('the live change', () => seen.length === 3);
      assert.deepEqual(seen.slice(2), live.ids);

      await server.restart();
      const after = await kp.saveData([loginBlob(21, 21), loginBlob(22, 22)]);
      await until('the feed to reconnect', () => states.includes('reconnecting'));
      await until('the changes posted after the restart', () => seen.length >= 5, 10_000);
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(seen.slice(3), after.ids, 'no replay again, no gap');
      assert.equal(seen.length, 5);
    } finally {
      feed.close();
    }
  },
);

// The JavaScript client against a kpiggybank that goes away and comes back:
// stopped under a follower and started again on the same port and data, or
// not running yet when the follower starts. Node 20's WebSocket (behind
// --experimental-websocket) reports a failed connection with `error` and no
// `close`, so a follower that waits for `close` stays down for good.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import KPiggybank, { KPiggybankError } from '../../static/kpiggybank.js';
import { Server, loginBlob, until, withWebSocket } from './server.mjs';

const HAS_WEBSOCKET = typeof globalThis.WebSocket === 'function';

/** Each test's options: restarts take a second or two, never twenty. */
const OPTIONS = { timeout: 20_000 };

/**
 * Fails the test unless this Node can run `transport`: a WebSocket run
 * fails loudly, never skips, when Node has no WebSocket.
 */
function requireTransport(transport) {
  assert.ok(
    transport !== 'websocket' || HAS_WEBSOCKET,
    'no global WebSocket: run Node 20 with --experimental-websocket (scripts/test does)',
  );
}

/** A feed and what it reported. */
function follow(kp, transport) {
  const feed = kp.followChanges({ transport });
  const seen = [];
  const errors = [];
  feed.on('change', (c) => seen.push(c));
  feed.on('error', (e) => errors.push(e));
  return { feed, seen, errors };
}

/** The errors of attempts that found no server name it, as KPiggybankErrors. */
function assertUnreachable(err, server) {
  assert.ok(err instanceof KPiggybankError, `a KPiggybankError, not ${err?.name}: ${err?.message}`);
  assert.equal(err.code, 'unreachable');
  assert.ok(err.message.includes(server.addr), `names the server: ${err.message}`);
  assert.ok(err.cause !== undefined, 'keeps the cause');
}

async function wsConnections(server) {
  const res = await fetch(server.url + '/wsapi/stats');
  return (await res.json()).connections;
}

/** Posts `n` blobs numbered from `from`; their ids. */
async function post(kp, from, n) {
  const blobs = Array.from({ length: n }, (_, i) => loginBlob(from + i, from + i));
  return (await kp.saveData(blobs)).ids;
}

/** Lets a duplicate that would come late arrive before the check. */
const settle = () => new Promise((r) => setTimeout(r, 300));

for (const transport of ['websocket', 'stream']) {
  for (const signal of ['SIGTERM', 'SIGKILL']) {
    test(`${transport}: a follower gets every change once across a stop (${signal}) and a start on the same port`, OPTIONS, async () => {
      requireTransport(transport);
      const server = await Server.start();
      const kp = new KPiggybank(server.url);
      const { feed, seen, errors } = follow(kp, transport);
      try {
        await feed.ready;
        const before = await post(kp, 1, 2);
        await until('the changes before the stop', () => seen.length === 2);
        assert.equal(errors.length, 0);

        await server.stopProcess(signal);
        // The drop, then at least one attempt that finds nobody listening:
        // the attempt Node 20's WebSocket ends with `error` alone.
        await until('a reconnect to fail while the server is down', () => errors.length >= 2);
        assertUnreachable(errors.at(-1), server);

        await server.startAgain();
        // Posted before the feed is back, most likely: the resume by seq
        // must bring them, once.
        const after = await post(kp, 3, 3);
        await until('the changes posted after the start', () => seen.length >= 5, 10_000);
        await settle();
        assert.deepEqual(
          seen.map((c) => c.id),
          [...before, ...after],
          'every change exactly once, in order',
        );
        assert.equal(feed.state, 'live');
        if (transport === 'websocket') {
          assert.equal(await wsConnections(server), 1, 'one socket, not one per reconnect scheduled');
        }
      } finally {
        feed.close();
        await server.stop();
      }
    });
  }

  test(`${transport}: a follower started while no server listens connects once one does`, OPTIONS, async () => {
    requireTransport(transport);
    const server = await Server.start();
    await server.stopProcess();
    const kp = new KPiggybank(server.url);
    const { feed, seen, errors } = follow(kp, transport);
    try {
      await until('the first attempt to fail', () => errors.length >= 1);
      assertUnreachable(errors[0], server);
      assert.equal(feed.state, 'reconnecting');

      await server.startAgain();
      await until('the feed to be live', () => feed.state === 'live', 10_000);
      await feed.ready;
      const ids = await post(kp, 1, 2);
      await until('the changes', () => seen.length >= 2);
      await settle();
      assert.deepEqual(
        seen.map((c) => c.id),
        ids,
      );
      if (transport === 'websocket') assert.equal(await wsConnections(server), 1);
    } finally {
      feed.close();
      await server.stop();
    }
  });
}

test('every method rejects with a KPiggybankError naming the server when none listens', { timeout: 20_000 }, async () => {
  const server = await Server.start();
  await server.stopProcess();
  try {
    const kp = new KPiggybank(server.url);
    const calls = {
      saveData: () => kp.saveData(loginBlob(1, 1)),
      fetchRange: () => kp.fetchRange({ start: 0 }),
      count: () => kp.count(),
      last: () => kp.last(),
    };
    for (const [name, call] of Object.entries(calls)) {
      await assert.rejects(call(), (e) => {
        assertUnreachable(e, server);
        assert.match(e.message, /cannot reach/, name);
        return true;
      });
    }
    // The callback gets the same error.
    const err = await new Promise((resolve) => kp.count((e) => resolve(e)));
    assertUnreachable(err, server);
  } finally {
    await server.stop();
  }
});

/**
 * A WebSocket that never connects and reports it as `events` says: browsers
 * fire `error` then `close`, Node 20 `error` alone. No server can make a
 * real socket choose, hence the stand-in.
 */
function failingSocket(events) {
  const sockets = [];
  class FailingSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      sockets.push(this);
      let delay = 0;
      for (const name of events) {
        // Separate tasks, as in browsers, where the close comes later.
        setTimeout(() => {
          if (name === 'close') this.onclose?.({ code: 1006, reason: '' });
          else this.onerror?.({ type: 'error' });
        }, delay++);
      }
    }
    close() {
      this.readyState = 3;
    }
    send() {
      throw new Error('never open');
    }
  }
  return { FailingSocket, sockets };
}

for (const events of [['error'], ['error', 'close'], ['close']]) {
  test(`a socket failing with ${events.join(' then ')} is retried once, with backoff`, { timeout: 10_000 }, async () => {
    const { FailingSocket, sockets } = failingSocket(events);
    await withWebSocket(FailingSocket, async () => {
      const feed = new KPiggybank('http://127.0.0.1:9').followChanges({ transport: 'websocket' });
      const errors = [];
      feed.on('error', (e) => errors.push(e));
      try {
        await until('three failed attempts', () => errors.length >= 3);
        // Let a second report of the third failure, if any, come in.
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(sockets.length, 3, 'one new socket per failure');
        assert.equal(errors.length, 3, 'one error per failure');
        assert.equal(feed.attempts, 3, 'the backoff grows once per failure');
        assert.ok(errors.every((e) => e instanceof KPiggybankError));
      } finally {
        feed.close();
      }
    });
  });
}

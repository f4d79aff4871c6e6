// The JavaScript client against a kpiggybank that goes away and comes back:
// stopped under a follower and started again on the same port and data, or
// not running yet when the follower starts. Node 20's WebSocket (behind
// --experimental-websocket) reports a failed connection with `error` and no
// `close`, so a follower that waits for `close` stays down for good.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import KPiggybank, { KPiggybankError } from '../../static/kpiggybank.js';
import { Server, loginBlob, until } from './server.mjs';

/** The errors of attempts that found no server name it, as KPiggybankErrors. */
function assertUnreachable(err, server) {
  assert.ok(err instanceof KPiggybankError, `a KPiggybankError, not ${err?.name}: ${err?.message}`);
  assert.equal(err.code, 'unreachable');
  assert.ok(err.message.includes(server.addr), `names the server: ${err.message}`);
  assert.ok(err.cause !== undefined, 'keeps the cause');
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

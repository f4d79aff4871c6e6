// kpiggybank.js: the JavaScript client of kpiggybank, for browsers and
// Node.js 20+, as one dependency-free ES module.
//
// The API of the original Node.js client, with Promises added:
//
//   const kp = new KPiggybank('127.0.0.1', 3000);   // or new KPiggybank('http://host:3000')
//   await kp.saveData(blob);                        // or kp.saveData(blob, (err, res) => …)
//   const blobs = await kp.fetchRange({ start, end, limit, descending });
//   const n = await kp.count();
//   const feed = kp.followChanges({ last: 100 });
//   feed.on('change', (c) => console.log(c.seq, c.id, c.doc));
//   feed.on('error', (e) => console.warn(e.message));  // the feed reconnects by itself
//   feed.close();
//   const kpis = await kp.stats({ start, end, bucket: '1m' });   // computed by the server
//   const live = kp.followStats();                  // the server's live rollup, once a second
//   live.on('stats', (frame) => console.log(frame.windows['5m'].count));
//
// Every callback is Node-style `(err, result)`; every method also returns a
// Promise. followChanges() returns the feed at once (it is an event emitter);
// its `ready` Promise settles when the first subscription is confirmed.

/** The port the server listens on unless told otherwise. */
const DEFAULT_PORT = 3000;

/** First reconnect delay; doubles per failed attempt. */
const BACKOFF_MIN_MS = 250;

/**
 * Longest reconnect delay: short, because the people watching the page
 * would rather see it back within seconds than spare the server a request.
 */
const BACKOFF_MAX_MS = 3000;

/** Heartbeat asked of the HTTP change stream, to notice a dead connection. */
const STREAM_HEARTBEAT_MS = 5000;

/** A stream silent for this long (several heartbeats) is taken for dead. */
const STREAM_SILENCE_MS = 3 * STREAM_HEARTBEAT_MS;

/**
 * The stats stream sends a frame every second and has no heartbeat of its
 * own: five silent seconds mean the connection is dead, even when no TCP
 * error says so (a server that froze, a proxy that holds the line).
 */
const STATS_SILENCE_MS = 5000;

/**
 * Over a WebSocket, a server that answers `{"type":"subscribe","stats":true}`
 * with a change subscription (one that predates stats on the socket, and
 * ignores the unknown field) sends no stats frame: after this long, or at
 * its first change frame, the feed follows over the HTTP stream instead.
 */
const STATS_WS_GRACE_MS = 3000;

/** A tiny event emitter, so the module runs the same in browsers and Node. */
export class Emitter {
  #listeners = new Map();

  /** Calls `fn` on every `name` event; returns this, for chaining. */
  on(name, fn) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    this.#listeners.get(name).add(fn);
    return this;
  }

  /** Stops calling `fn` on `name` events. */
  off(name, fn) {
    this.#listeners.get(name)?.delete(fn);
    return this;
  }

  /** Calls the listeners of `name`; a throwing listener does not stop the others. */
  emit(name, ...args) {
    const listeners = this.#listeners.get(name);
    if (!listeners) return false;
    for (const fn of [...listeners]) {
      try {
        fn.apply(this, args);
      } catch (e) {
        // Thrown outside our call stack, so it is reported but the feed goes on.
        setTimeout(() => {
          throw e;
        });
      }
    }
    return listeners.size > 0;
  }
}

/**
 * An error answered by the server (`status` and `code` say which), or the
 * server could not be reached (`code` 'unreachable', the network's error in
 * `cause`).
 */
export class KPiggybankError extends Error {
  constructor(message, status, code, options) {
    super(message, options);
    this.name = 'KPiggybankError';
    this.status = status;
    this.code = code;
  }
}

/** Why a connection failed, in words. */
function reason(err) {
  const said = err?.message || String(err);
  // Node's fetch says only "fetch failed"; what failed (ECONNREFUSED…) is its cause.
  const inner = err?.cause?.message || err?.cause?.code;
  return inner && inner !== said ? `${said}: ${inner}` : said;
}

/** No answer from `url`, as one error whatever the runtime's network threw. */
function unreachable(url, cause) {
  const message = `cannot reach kpiggybank at ${url} (${reason(cause)})`;
  return new KPiggybankError(message, undefined, 'unreachable', { cause });
}

/** A connection to `url` that was up and broke. */
function connectionLost(what, url, cause) {
  return new KPiggybankError(`${what} ${url} broke (${reason(cause)})`, undefined, undefined, {
    cause,
  });
}

/** Settles `callback` (if any) from `promise`, and returns the promise. */
function withCallback(promise, callback) {
  if (typeof callback === 'function') {
    promise.then(
      (value) => callback(null, value),
      (err) => callback(err),
    );
  }
  return promise;
}

async function errorOf(res) {
  let message = `HTTP ${res.status}`;
  let code;
  try {
    const body = await res.json();
    if (body && body.error) message = body.error;
    code = body && body.code;
  } catch {
    // Not JSON: the status line is all we have.
  }
  return new KPiggybankError(message, res.status, code);
}

async function json(res) {
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

/** A seq as a query parameter: JSON, so that a string seq stays a string. */
function seqParam(seq) {
  return JSON.stringify(seq);
}

/**
 * Closes a socket the feed is done with, deaf to its last events: one that
 * reported only `error` may still hold a connection.
 */
function retire(ws) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try {
    ws.close(1000);
  } catch {
    // Already closed, or a runtime that will not close a failed socket.
  }
}

/** A client of one kpiggybank server. */
export class KPiggybank {
  /**
   * `new KPiggybank(host, port)` as in the original, or
   * `new KPiggybank('http://host:port')`, or, in a page served by
   * kpiggybank, `new KPiggybank()` for the page's own server.
   */
  constructor(host, port) {
    if (host === undefined || host === null || host === '') {
      this.baseUrl = globalThis.location
        ? globalThis.location.origin
        : `http://127.0.0.1:${DEFAULT_PORT}`;
    } else if (/^https?:\/\//i.test(host)) {
      this.baseUrl = String(host).replace(/\/+$/, '');
    } else {
      this.baseUrl = `http://${host}:${port ?? DEFAULT_PORT}`;
    }
  }

  /** `baseUrl` + `path`. */
  url(path) {
    return this.baseUrl + path;
  }

  /**
   * Fetches `path` and reads the answer with `read`. Whatever fails on the
   * way rejects with a KPiggybankError, so callers handle one kind of error.
   */
  async request(path, init, read = json) {
    const url = this.url(path);
    let res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      throw unreachable(url, e);
    }
    try {
      return await read(res);
    } catch (e) {
      if (e instanceof KPiggybankError) throw e;
      // Cut off mid-answer, or not JSON (a proxy's error page).
      const message = `the answer of ${url} could not be read (${reason(e)})`;
      throw new KPiggybankError(message, res.status, undefined, { cause: e });
    }
  }

  /**
   * Stores a blob (an object with a numeric `timestamp`) or a list of blobs.
   * Resolves to `{ok: true, ids: [...]}` once they are durable.
   */
  saveData(blob, callback) {
    const promise = this.request('/wsapi/interaction_data', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      // Wrapped in `data`, so a blob that has a `data` field is stored as is.
      body: JSON.stringify({ data: blob }),
    });
    return withCallback(promise, callback);
  }

  /**
   * The blobs with `start <= timestamp <= end`, oldest first; options
   * (all optional): `start`, `end`, `limit`, `descending`.
   */
  fetchRange(options, callback) {
    if (typeof options === 'function') {
      callback = options;
      options = {};
    }
    const params = new URLSearchParams();
    for (const name of ['start', 'end', 'limit']) {
      const value = options?.[name];
      if (value !== undefined && value !== null) params.set(name, String(Math.trunc(value)));
    }
    if (options?.descending) params.set('descending', 'true');
    const query = params.toString();
    const promise = this.request('/wsapi/interaction_data' + (query ? '?' + query : ''));
    return withCallback(promise, callback);
  }

  /** How many blobs are stored. */
  count(callback) {
    return withCallback(this.request('/wsapi/interaction_data/count'), callback);
  }

  /** The blob with the greatest timestamp, or null when there is none. */
  last(callback) {
    const promise = this.request('/wsapi/interaction_data/last', undefined, (res) =>
      res.status === 404 ? null : json(res),
    );
    return withCallback(promise, callback);
  }

  /**
   * The KPIs of a window, computed by the server from its rollups (no blob
   * is sent): `{start, end, bucket_ms, percentiles, total, buckets}`, where
   * `total` and each bucket hold `count`, `duration` (`count`, `p50`,
   * `p95`, `p99`, `max`, in ms) and counts by `browser`, `os`, `language`,
   * `email_type` and `account`. Only buckets holding sign-ins are listed.
   *
   * Options (all optional): `start` and `end` (ms since the epoch, or
   * Dates; inclusive; left out, the stored blobs' first and last),
   * `bucket` (`'1s'`, `'10s'`, `'1m'`, `'5m'`, `'1h'`, `'1d'`, or a whole
   * number of seconds in ms; left out, the server picks one giving about
   * 120 buckets).
   */
  stats(options, callback) {
    if (typeof options === 'function') {
      callback = options;
      options = {};
    }
    const params = new URLSearchParams();
    for (const name of ['start', 'end']) {
      const value = options?.[name];
      // A Date is a time too: Number(date) is its ms.
      if (value !== undefined && value !== null) params.set(name, String(Math.trunc(Number(value))));
    }
    const bucket = options?.bucket;
    const promise = (async () => {
      // Inside the promise: a bad bucket rejects (and reaches the callback)
      // like every other error, instead of throwing at the caller.
      if (bucket !== undefined && bucket !== null) params.set('bucket', bucketParam(bucket));
      const query = params.toString();
      return this.request('/wsapi/interaction_data/stats' + (query ? '?' + query : ''));
    })();
    return withCallback(promise, callback);
  }

  /**
   * Follows the changes; see {@link ChangeFeed} for the options and
   * events. Uses a WebSocket where there is one (browsers, Node 22+, Node 20
   * with --experimental-websocket), else the HTTP ndjson stream.
   */
  followChanges(options = {}) {
    return new ChangeFeed(this, options);
  }

  /**
   * Follows the server's live KPIs, one frame a second; see
   * {@link StatsFeed} for the options and events.
   */
  followStats(options = {}) {
    return new StatsFeed(this, options);
  }
}

/** A bucket width as the server reads it: `'10s'` as is, 10000 (ms) as `'10'` (seconds). */
function bucketParam(bucket) {
  if (typeof bucket === 'number') {
    if (!(Number.isInteger(bucket) && bucket > 0 && bucket % 1000 === 0)) {
      throw new RangeError(`a bucket in ms must be a whole number of seconds, got ${bucket}`);
    }
    return String(bucket / 1000);
  }
  return String(bucket);
}

function hasWebSocket() {
  return typeof globalThis.WebSocket === 'function';
}

/**
 * Node 20 has a WebSocket only behind a flag, and a stream feed that cannot
 * replay looks like a server bug: say which flag, and what is used instead.
 */
const NO_WEBSOCKET =
  'this runtime has none (Node 20: run node with --experimental-websocket; ' +
  'Node 22+ and browsers have one)';

/** Throws when `options` need a WebSocket the transport or runtime lacks. */
function refuseWithoutWebSocket(transport, options) {
  if (transport === 'websocket' && !hasWebSocket()) {
    throw new RangeError(
      `followChanges({transport: 'websocket'}) needs a WebSocket and ${NO_WEBSOCKET}; ` +
        'leave transport out to follow over the HTTP stream instead',
    );
  }
  if (transport === 'stream' && options.last) {
    throw new RangeError(
      hasWebSocket()
        ? 'followChanges({last}) needs the WebSocket transport: the HTTP stream has no replay'
        : `followChanges({last}) needs a WebSocket and ${NO_WEBSOCKET}; without one the feed ` +
            'follows over the HTTP stream, which has no replay',
    );
  }
}

/**
 * What every live feed of this module shares: its state, its events and
 * its reconnects, with one backoff (0.25 s doubling to 3 s, jittered).
 * Subclasses open connections in `connect()` and call `dropped(err)` when
 * one ends, `connected()` when one works.
 */
class Follower extends Emitter {
  constructor() {
    super();
    this.state = 'connecting';
    this.closed = false;
    this.attempts = 0;
    /** When the next attempt is due (ms since the epoch), while reconnecting. */
    this.retryAt = null;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // A feed closed before it ever connected must not leave a rejection
    // nobody asked for.
    this.ready.catch(() => {});
  }

  /** Stops following; no more events after `state` 'closed'. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.disconnect();
    this.rejectReady(new Error('closed'));
    this.setState('closed');
  }

  /** Ends whatever connection is open, deaf to its last events. */
  disconnect() {}

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  /** A connection works: the backoff starts over and the feed is live. */
  connected() {
    this.attempts = 0;
    this.retryAt = null;
    this.setState('live');
  }

  /** Called when a connection ends: tell, then try again after a backoff. */
  dropped(err) {
    if (this.closed) return;
    this.emit('error', err);
    this.setState('reconnecting');
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts);
    this.attempts += 1;
    // Jitter, so that many pages do not all come back at the same instant.
    const wait = delay * (0.75 + Math.random() * 0.5);
    this.retryAt = Date.now() + wait;
    this.timer = setTimeout(() => this.connect(), wait);
  }
}

/**
 * A never-ending ndjson response, line by line: `onLine` gets each
 * non-empty line (empty ones are heartbeats), `onChunk` is told whenever
 * bytes arrive. Returns when the response ends, or when `onLine` returns
 * false.
 */
async function readLines(res, onLine, onChunk) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk();
    buffered += decoder.decode(value, { stream: true });
    // One pass over the chunk and one slice at the end: a chunk of many
    // lines costs its length, not its length times its lines.
    let from = 0;
    let end;
    while ((end = buffered.indexOf('\n', from)) >= 0) {
      const line = buffered.slice(from, end).trim();
      from = end + 1;
      if (line && onLine(line) === false) return;
    }
    buffered = buffered.slice(from);
  }
}

/** The largest `sample` a subscription may ask for, per second. */
const MAX_SAMPLE = 1_000_000;

/** Throws unless `sample` is left out or a whole number of changes per second. */
function checkSample(sample) {
  if (sample === undefined || sample === null) return;
  if (!(Number.isInteger(sample) && sample >= 1 && sample <= MAX_SAMPLE)) {
    throw new RangeError(
      `followChanges({sample}) takes a whole number of changes per second from 1 to ${MAX_SAMPLE}, got ${sample}`,
    );
  }
}

/**
 * A live change feed that reconnects by itself and resumes where it left
 * off (by `seq`, within the store's `epoch`), so no change is missed and
 * none is delivered twice.
 *
 * Options: `last` (replay the last N changes first; WebSocket only),
 * `since` + `epoch` (resume from a seq you kept), `transport`
 * (`'websocket'` or `'stream'`; chosen by default), `sample` (deliver at
 * most N changes a second, skipping the others: a page can show the feed
 * at any ingest rate; a server that predates sampling ignores it and sends
 * every change, so a feed with `sample` is not a complete record).
 *
 * Events: `change` ({type, seq, id, doc}), `error` (an Error; the feed keeps
 * trying), `state` ('connecting' | 'live' | 'reconnecting' | 'closed'),
 * `subscribed` ({epoch, seq}), `reset` ({epoch}: the store was wiped or
 * replaced, the seqs kept so far mean nothing any more).
 */
export class ChangeFeed extends Follower {
  constructor(client, options = {}) {
    super();
    this.client = client;
    this.options = { ...options };
    this.transport = options.transport ?? (hasWebSocket() ? 'websocket' : 'stream');
    refuseWithoutWebSocket(this.transport, options);
    checkSample(options.sample);
    /** Seq of the last change delivered, or where the feed stood when subscribed. */
    this.seq = options.since ?? null;
    /** The store epoch `seq` belongs to. */
    this.epoch = options.since !== undefined ? (options.epoch ?? null) : null;
    /** True when the feed was empty at subscription: resume from the start. */
    this.fromStart = false;
    this.connect();
  }

  disconnect() {
    clearTimeout(this.watchdog);
    if (this.ws) {
      retire(this.ws);
      this.ws = null;
    }
    this.abort?.abort();
  }

  /** Where to (re)start: after the last seq, from the start, or as first asked. */
  resumePoint() {
    if (this.seq !== null && this.seq !== undefined) return { since: this.seq, epoch: this.epoch };
    if (this.fromStart) return { since: 0, epoch: this.epoch };
    if (this.options.last) return { last: this.options.last };
    return {};
  }

  connect() {
    if (this.closed) return;
    this.setState(this.attempts === 0 ? 'connecting' : 'reconnecting');
    if (this.transport === 'websocket') this.openSocket();
    else this.openStream();
  }

  subscribed(epoch, seq, replay) {
    if (this.epoch !== null && epoch !== this.epoch) this.reset(epoch);
    this.epoch = epoch;
    if (!replay && (this.seq === null || this.seq === undefined)) {
      if (seq === null) this.fromStart = true;
      else this.seq = seq;
    }
    this.connected();
    this.emit('subscribed', { epoch, seq });
    this.resolveReady({ epoch, seq });
  }

  reset(epoch) {
    this.seq = null;
    this.fromStart = false;
    this.emit('reset', { epoch });
  }

  change(frame) {
    this.seq = frame.seq;
    this.emit('change', frame);
  }

  openSocket() {
    const url = this.client.baseUrl.replace(/^http/i, 'ws') + '/wsapi/ws';
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.dropped(unreachable(url, e));
      return;
    }
    this.ws = ws;
    let opened = false;
    let replay = false;
    const subscribe = () => {
      const point = this.resumePoint();
      replay = point.last !== undefined;
      const sample = this.options.sample;
      ws.send(JSON.stringify({ type: 'subscribe', ...point, ...(sample ? { sample } : {}) }));
    };
    ws.onopen = () => {
      opened = true;
      subscribe();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        this.emit('error', e);
        return;
      }
      switch (frame.type) {
        case 'change':
          this.change(frame);
          break;
        case 'subscribed':
          this.subscribed(frame.epoch, frame.seq ?? null, replay);
          break;
        case 'error':
          if (frame.code === 'epoch_mismatch') {
            // The store was replaced: start over as if new.
            this.epoch = null;
            this.reset(null);
            subscribe();
          } else {
            this.emit('error', new KPiggybankError(frame.error, undefined, frame.code));
          }
          break;
        default:
          break;
      }
    };
    // Browsers fire `error` then `close`; Node 20 fires only `error` when it
    // cannot connect. Whichever comes first ends this socket, once.
    const lost = (err) => {
      if (this.ws !== ws) return;
      this.ws = null;
      retire(ws);
      this.dropped(err);
    };
    ws.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : '';
      lost(new KPiggybankError(`the WebSocket to ${url} closed (${event.code}${why})`));
    };
    ws.onerror = (event) => {
      // Browsers say nothing of why; Node's ErrorEvent has a message.
      const cause = event?.error ?? new Error(event?.message || 'the connection failed');
      lost(opened ? connectionLost('the WebSocket to', url, cause) : unreachable(url, cause));
    };
  }

  async openStream() {
    const abort = new AbortController();
    this.abort = abort;
    const point = this.resumePoint();
    const url = this.client.url(
      '/wsapi/interaction_data/stream?' + streamQuery(point, this.options.sample),
    );
    const armWatchdog = () => {
      clearTimeout(this.watchdog);
      const silent = () =>
        abort.abort(new KPiggybankError(`the change stream ${url} went silent`));
      this.watchdog = setTimeout(silent, STREAM_SILENCE_MS);
    };
    let res;
    try {
      armWatchdog();
      res = await fetch(url, { signal: abort.signal });
    } catch (e) {
      this.streamEnded(abort, unreachable(url, e));
      return;
    }
    try {
      this.streamStarted(res, point);
      if (!res.ok) throw await errorOf(res);
      await readLines(
        res,
        (line) => {
          const frame = JSON.parse(line);
          if (frame.type === 'change') this.change(frame);
          return !this.closed;
        },
        armWatchdog,
      );
      if (!this.closed) throw new KPiggybankError(`the change stream ${url} ended`);
    } catch (e) {
      const err = e instanceof KPiggybankError ? e : connectionLost('the change stream', url, e);
      this.streamEnded(abort, err);
    }
  }

  /** Takes the feed's position from the stream's headers. */
  streamStarted(res, point) {
    if (res.status === 409) {
      // The store was replaced: start over from now.
      this.epoch = null;
      this.reset(null);
    }
    if (!res.ok) return;
    // A server that names the feed's position lets us resume even before
    // the first change; without it, a reconnect before then restarts at "now".
    const headerSeq = res.headers.get('x-kpiggybank-seq');
    const epoch = res.headers.get('x-kpiggybank-epoch');
    if (point.since !== undefined || headerSeq !== null) {
      this.subscribed(epoch, point.since ?? parseSeq(headerSeq), false);
    } else {
      this.epoch = epoch;
      this.connected();
      this.emit('subscribed', { epoch, seq: null });
      this.resolveReady({ epoch, seq: null });
    }
  }

  /** After a stream ends: why it did, and when to try again. */
  streamEnded(abort, err) {
    clearTimeout(this.watchdog);
    if (this.closed) return;
    // An abort of ours (the watchdog) says why better than what it broke.
    this.dropped(abort.signal.aborted && abort.signal.reason ? abort.signal.reason : err);
  }
}

/** The stream's query: heartbeats, where to resume, and the sample asked for. */
function streamQuery(point, sample) {
  const params = new URLSearchParams({ heartbeat: String(STREAM_HEARTBEAT_MS) });
  if (point.since !== undefined) {
    params.set('since', seqParam(point.since));
    if (point.epoch) params.set('epoch', point.epoch);
  }
  if (sample) params.set('sample', String(sample));
  return params;
}

/** A seq from a header: JSON, though a bare string is taken as is. */
function parseSeq(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * The server's live KPIs, one `stats` frame a second, computed once per
 * server from every sign-in it stores (by blob timestamp, on the server's
 * clock), whatever the ingest rate:
 *
 *   {type: 'stats', at, interval_ms, second, windows: {'10s', '5m', '1h'},
 *    per_second: {start, counts: [300 numbers, oldest first]}}
 *
 * where `second` and each window hold what a `stats()` total holds. Frames
 * carry the state now, not changes: nothing is resumed after a drop, the
 * next frame is whole.
 *
 * Options: `transport`: `'stream'` (the default: the ndjson
 * `/wsapi/interaction_data/stats/stream`, in browsers and Node alike) or
 * `'websocket'` (`{"type":"subscribe","stats":true}` on `/wsapi/ws`; a
 * server that does not send stats there is noticed, with an `error` event,
 * and followed over the stream instead).
 *
 * Events: `stats` (a frame), `state` ('connecting' | 'live' |
 * 'reconnecting' | 'closed'; live from the first frame of a connection),
 * `error` (an Error; the feed keeps trying). `frame` is the newest frame;
 * `ready` settles with the first.
 */
export class StatsFeed extends Follower {
  constructor(client, options = {}) {
    super();
    this.client = client;
    this.options = { ...options };
    this.transport = options.transport ?? 'stream';
    if (this.transport !== 'stream' && this.transport !== 'websocket') {
      throw new RangeError(`followStats({transport}) is 'stream' or 'websocket', got ${this.transport}`);
    }
    if (this.transport === 'websocket' && !hasWebSocket()) {
      throw new RangeError(
        `followStats({transport: 'websocket'}) needs a WebSocket and ${NO_WEBSOCKET}; ` +
          'leave transport out to follow over the HTTP stream',
      );
    }
    /** The newest frame, or null before the first. */
    this.frame = null;
    this.connect();
  }

  disconnect() {
    clearTimeout(this.watchdog);
    clearTimeout(this.grace);
    if (this.ws) {
      retire(this.ws);
      this.ws = null;
    }
    this.abort?.abort();
  }

  connect() {
    if (this.closed) return;
    this.setState(this.attempts === 0 ? 'connecting' : 'reconnecting');
    if (this.transport === 'websocket') this.openSocket();
    else this.openStream();
  }

  /** Delivers one frame; the first of a connection makes the feed live. */
  deliver(frame) {
    if (!frame || frame.type !== 'stats') return;
    this.frame = frame;
    if (this.state !== 'live') this.connected();
    this.resolveReady(frame);
    this.emit('stats', frame);
  }

  /** Restarts the watchdog: called whenever bytes arrive. */
  armWatchdog(onSilence) {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(onSilence, STATS_SILENCE_MS);
  }

  async openStream() {
    const abort = new AbortController();
    this.abort = abort;
    const url = this.client.url('/wsapi/interaction_data/stats/stream');
    const arm = () =>
      this.armWatchdog(() =>
        abort.abort(new KPiggybankError(`the stats stream ${url} went silent`)),
      );
    const ended = (err) => {
      clearTimeout(this.watchdog);
      if (this.closed || this.abort !== abort) return;
      this.dropped(abort.signal.aborted && abort.signal.reason ? abort.signal.reason : err);
    };
    let res;
    try {
      arm();
      res = await fetch(url, { signal: abort.signal });
    } catch (e) {
      ended(unreachable(url, e));
      return;
    }
    try {
      if (!res.ok) throw await errorOf(res);
      await readLines(
        res,
        (line) => {
          this.deliver(JSON.parse(line));
          return !this.closed;
        },
        arm,
      );
      if (!this.closed) throw new KPiggybankError(`the stats stream ${url} ended`);
    } catch (e) {
      ended(e instanceof KPiggybankError ? e : connectionLost('the stats stream', url, e));
    }
  }

  openSocket() {
    const url = this.client.baseUrl.replace(/^http/i, 'ws') + '/wsapi/ws';
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.dropped(unreachable(url, e));
      return;
    }
    this.ws = ws;
    let opened = false;
    let gotStats = false;
    const lost = (err) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.grace);
      clearTimeout(this.watchdog);
      retire(ws);
      this.dropped(err);
    };
    // A server without stats on the socket took the subscription for one
    // to changes: say so once, and follow the stream instead, at once.
    const unsupported = () => {
      if (this.ws !== ws || gotStats) return;
      this.ws = null;
      clearTimeout(this.grace);
      clearTimeout(this.watchdog);
      retire(ws);
      this.transport = 'stream';
      this.emit(
        'error',
        new KPiggybankError(
          `${url} does not send stats over the WebSocket: following the HTTP stats stream instead`,
          undefined,
          'unsupported',
        ),
      );
      this.connect();
    };
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify({ type: 'subscribe', stats: true }));
      this.grace = setTimeout(unsupported, STATS_WS_GRACE_MS);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        this.emit('error', e);
        return;
      }
      switch (frame.type) {
        case 'stats':
          gotStats = true;
          clearTimeout(this.grace);
          this.armWatchdog(() =>
            lost(new KPiggybankError(`the stats over the WebSocket to ${url} went silent`)),
          );
          this.deliver(frame);
          break;
        case 'change':
          if (!gotStats) unsupported();
          break;
        case 'error':
          this.emit('error', new KPiggybankError(frame.error, undefined, frame.code));
          break;
        default:
          break;
      }
    };
    ws.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : '';
      lost(new KPiggybankError(`the WebSocket to ${url} closed (${event.code}${why})`));
    };
    ws.onerror = (event) => {
      const cause = event?.error ?? new Error(event?.message || 'the connection failed');
      lost(opened ? connectionLost('the WebSocket to', url, cause) : unreachable(url, cause));
    };
  }
}

export default KPiggybank;

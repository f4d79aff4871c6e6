// Starts the real kpiggybank binary for the JavaScript client's tests, as
// tests/support/mod.rs does for the Rust ones: 127.0.0.1, a free port
// (PORT=0) unless told one, a temporary DATA_DIR, and the address read from
// the "kpiggybank listening on http://ADDR" line on stderr.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Built by `cargo build --bins` in scripts/test. */
export const BINARY = process.env.KPIGGYBANK_BIN ?? join(ROOT, 'target', 'debug', 'kpiggybank');

/** How long the server may take to say it listens. */
const START_TIMEOUT_MS = 30_000;

export class Server {
  /** Starts a server on a fresh data directory. */
  static async start() {
    const dataDir = mkdtempSync(join(tmpdir(), 'kpiggybank-js-'));
    const server = new Server(dataDir);
    await server.run('0');
    return server;
  }

  constructor(dataDir) {
    this.dataDir = dataDir;
    this.logs = [];
  }

  /** Spawns the binary on `port` and waits for its address. */
  run(port) {
    const env = {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: port,
      MODE: 'dev',
      DATA_DIR: this.dataDir,
      DB_BACKEND: 'embedded',
    };
    // The "listening on" line is logged at the default level; a RUST_LOG
    // from the caller could hide it.
    delete env.RUST_LOG;
    const child = spawn(BINARY, [], {
      cwd: this.dataDir,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child = child;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`kpiggybank did not start:\n${this.logs.join('\n')}`));
      }, START_TIMEOUT_MS);
      let partial = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (text) => {
        partial += text;
        const lines = partial.split('\n');
        partial = lines.pop();
        for (const line of lines) {
          this.logs.push(line);
          const match = /listening on http:\/\/(\S+)/.exec(line);
          if (match) {
            clearTimeout(timer);
            this.addr = match[1];
            this.url = `http://${this.addr}`;
            this.port = this.addr.split(':').pop();
            resolve(this);
          }
        }
      });
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${BINARY} (cargo build --bins): ${e.message}`));
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`kpiggybank exited with ${code}:\n${this.logs.join('\n')}`));
      });
    });
  }

  /**
   * Stops the process this object started (by its PID) and waits for it to
   * exit. SIGTERM lets it shut down gracefully (WebSockets closed with 1001);
   * SIGKILL drops every connection as a crash would.
   */
  stopProcess(signal = 'SIGTERM') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  }

  /** Starts it again on the port and data it had, after a stopProcess(). */
  startAgain() {
    return this.run(this.port);
  }

  /** Stops it and starts it again on the same port and data. */
  async restart(signal) {
    await this.stopProcess(signal);
    await this.startAgain();
  }

  /** Stops it and removes its data. */
  async stop() {
    await this.stopProcess();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A sign-in blob shaped like tests/fixtures/login-sequence.json. */
export function loginBlob(timestamp, n = 0) {
  return {
    timestamp,
    event_stream: [
      ['picker', 732],
      ['assertion_generated', 4500],
      ['complete', 4500 + n],
    ],
    email_type: n % 3 === 0 ? 'primary' : 'secondary',
    new_account: n % 4 === 0,
    language: 'en_US',
    screen_size: { width: 640, height: 480 },
    user_agent: { os: 'TestOS', browser: 'Foo', version: String(n) },
  };
}

/** Waits until `check()` is truthy, or fails naming `what`. */
export async function until(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Runs `fn` with `globalThis.WebSocket` replaced by `value` (undefined: as
 * in Node 20 without --experimental-websocket), then puts it back.
 */
export async function withWebSocket(value, fn) {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'WebSocket');
  Object.defineProperty(globalThis, 'WebSocket', { value, configurable: true, writable: true });
  try {
    return await fn();
  } finally {
    if (saved) Object.defineProperty(globalThis, 'WebSocket', saved);
    else delete globalThis.WebSocket;
  }
}

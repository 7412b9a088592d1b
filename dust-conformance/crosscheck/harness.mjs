// What every cross-check file shares: the server binary, the bound of every wait, and the
// server process driven through its stdin control protocol (see `dust_conformance::command`).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN =
  process.env.DUST_CONFORMANCE_BIN ??
  resolve(here, "../../target/debug/dust-conformance-server");
/** The bound of every wait. */
export const T = 5000;

export function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Records each occurrence of something (with a value) and lets a test await the n-th one. */
export class Counter {
  constructor(label) {
    this.label = label;
    this.n = 0;
    this.values = [];
    this.waiters = [];
  }
  hit(value) {
    this.n += 1;
    this.values.push(value);
    this.waiters = this.waiters.filter(([k, res]) => (this.n >= k ? (res(value), false) : true));
  }
  /** Resolves with the value of the k-th hit. */
  reach(k, ms = T) {
    if (this.n >= k) return Promise.resolve(this.values[k - 1]);
    return withTimeout(
      new Promise((res) => this.waiters.push([k, () => res(this.values[k - 1])])),
      ms,
      `${this.label} #${k} (have ${this.n}: ${JSON.stringify(this.values)})`,
    );
  }
}

/** The server process, driven through its stdin control protocol. */
export class ServerProcess {
  /**
   * Starts the binary with `--control-stdin` and `args`; `url` is the endpoint it prints that
   * ends with `path` (`/socket`: the echo and presence socket; `/ws/sync`: the Dust socket).
   */
  static async start({ args = [], path = "/socket" } = {}) {
    if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}; run ./run.sh`);
    const server = new ServerProcess();
    server.child = spawn(BIN, ["--control-stdin", ...args], {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    server.pending = new Map();
    server.nextTag = 1;
    server.exited = new Promise((res) => server.child.once("exit", (code) => res(code)));
    const url = new Promise((res, rej) => {
      server.child.once("exit", (code) => rej(new Error(`server exited early (${code})`)));
      createInterface({ input: server.child.stdout }).on("line", (line) => {
        if (line.startsWith("listening ")) {
          if (line.endsWith(path)) res(line.slice("listening ".length));
          return;
        }
        const answer = JSON.parse(line);
        const waiter = server.pending.get(answer.tag);
        server.pending.delete(answer.tag);
        waiter?.(answer);
      });
    });
    server.url = await withTimeout(url, T, "server start");
    return server;
  }

  /** Sends a command; resolves with its answer, rejects when it failed. */
  async cmd(command, ms = T) {
    const tag = this.nextTag++;
    const answer = new Promise((res) => this.pending.set(tag, res));
    this.child.stdin.write(`${JSON.stringify({ ...command, tag })}\n`);
    const reply = await withTimeout(answer, ms, `command ${command.cmd}`);
    if (!reply.ok) throw new Error(`command ${JSON.stringify(command)} failed: ${reply.error}`);
    return reply;
  }

  async stats() {
    return (await this.cmd({ cmd: "stats" })).stats;
  }

  /** Waits until a server counter reaches a value. */
  async waitStat(stat, atLeast) {
    return (await this.cmd({ cmd: "wait", stat, at_least: atLeast, timeout_ms: T }, T + 1000)).stats;
  }

  async stop() {
    await this.cmd({ cmd: "shutdown" }).catch(() => {});
    const code = await withTimeout(this.exited, T, "server exit");
    assert.equal(code, 0, "the server exits cleanly");
  }
}

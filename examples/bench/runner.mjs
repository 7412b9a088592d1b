// The phoenix.js client of bench_peers (examples/examples/bench_peers.rs): one run per process.
//
//   node --expose-gc runner.mjs --workload W --payload BYTES --ops N --window N --url URL
//        --topic TOPIC --timeout-s S [--client phoenix.js|phoenix.js/msgpack --runtime ...]
//
// `--client phoenix.js/msgpack` speaks MessagePack (vsn 3.0.0) through phoenix.js's
// `encode`/`decode` options with msgpackr, as Dust's TypeScript SDK does.
//
// Measures itself from after connect/join to the end of the workload: CPU (process.cpuUsage,
// user + sys), wall time, peak RSS (resourceUsage().maxRSS), and prints one JSON line. For the
// fanout workload it prints `ready` once joined; the orchestrator then starts the flood.
import { performance } from "node:perf_hooks";

import { Packr, Unpackr } from "msgpackr";
import { Socket } from "phoenix";
import WebSocket from "ws";

function arg(name) {
  const at = process.argv.indexOf(name);
  if (at < 0 || at + 1 >= process.argv.length) throw new Error(`missing ${name}`);
  return process.argv[at + 1];
}

const workload = arg("--workload");
const payloadBytes = Number(arg("--payload"));
const ops = Number(arg("--ops"));
const windowSize = Number(arg("--window"));
const url = arg("--url");
const topic = arg("--topic");
const timeoutMs = Number(arg("--timeout-s")) * 1000;
const clientAt = process.argv.indexOf("--client");
const client = clientAt >= 0 ? process.argv[clientAt + 1] : "phoenix.js";
const msgpack = client.endsWith("/msgpack");

/** `{"body":"xxx…"}`, exactly `bytes` long once encoded (the same as the Rust clients). */
function payload(bytes) {
  return { body: "x".repeat(Math.max(bytes - 11, 1)) };
}

function deadline(label) {
  return setTimeout(() => fail(new Error(`phoenix.js ${label}: timed out`)), timeoutMs).unref();
}

function fail(error) {
  process.stderr.write(`phoenix.js: ${error?.stack ?? error}\n`);
  process.exit(1);
}

class Meter {
  constructor() {
    this.cpu = process.cpuUsage();
    this.wall = performance.now();
  }
  stop() {
    const cpu = process.cpuUsage(this.cpu);
    return { wall_s: (performance.now() - this.wall) / 1000, cpu_s: (cpu.user + cpu.system) / 1e6 };
  }
}

function emit(done, { wall_s, cpu_s }, extra = {}) {
  const result = {
    client,
    workload,
    payload_bytes: workload === "channels" ? 0 : payloadBytes,
    ops: done,
    wall_s,
    cpu_s,
    ops_per_s: wall_s > 0 ? done / wall_s : 0,
    cpu_us_per_op: done > 0 ? (cpu_s * 1e6) / done : 0,
    p50_us: null,
    p99_us: null,
    peak_rss_kib: process.resourceUsage().maxRSS,
    runtime: "node",
    ...extra,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

function percentile(sorted, q) {
  const rank = Math.min(Math.max(Math.ceil(q * sorted.length), 1), sorted.length);
  return sorted[rank - 1];
}

async function connect() {
  const options = { transport: WebSocket };
  if (msgpack) {
    const packr = new Packr({ useRecords: false });
    const unpackr = new Unpackr({ useRecords: false });
    Object.assign(options, {
      vsn: "3.0.0",
      encode: (msg, callback) =>
        callback(packr.pack([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload])),
      decode: (raw, callback) => {
        const [join_ref, ref, topic, event, payload] =
          typeof raw === "string" ? JSON.parse(raw) : unpackr.unpack(new Uint8Array(raw));
        return callback({ join_ref, ref, topic, event, payload });
      },
    });
  }
  const socket = new Socket(url, options);
  await new Promise((resolve, reject) => {
    socket.onOpen(resolve);
    socket.onError((e) => reject(new Error(`socket error: ${e?.message ?? e}`)));
    socket.connect();
  });
  return socket;
}

function join(channel) {
  return new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`join refused: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timed out")));
  });
}

function push(channel, body) {
  return new Promise((resolve, reject) => {
    channel
      .push("echo", body, 10000)
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`echo replied error ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("echo timed out")));
  });
}

async function sequential(socket) {
  const channel = socket.channel(topic, {});
  await join(channel);
  const body = payload(payloadBytes);
  const latencies = new Float64Array(ops);
  const meter = new Meter();
  for (let i = 0; i < ops; i++) {
    const t = performance.now();
    await push(channel, body);
    latencies[i] = (performance.now() - t) * 1000;
  }
  const times = meter.stop();
  latencies.sort();
  emit(ops, times, { p50_us: percentile(latencies, 0.5), p99_us: percentile(latencies, 0.99) });
}

async function pipelined(socket) {
  const channel = socket.channel(topic, {});
  await join(channel);
  const body = payload(payloadBytes);
  const meter = new Meter();
  await new Promise((resolve, reject) => {
    let sent = 0;
    let done = 0;
    const one = () => {
      sent += 1;
      channel
        .push("echo", body, 30000)
        .receive("ok", () => {
          done += 1;
          if (done === ops) resolve();
          else if (sent < ops) one();
        })
        .receive("error", (e) => reject(new Error(`echo replied error ${JSON.stringify(e)}`)))
        .receive("timeout", () => reject(new Error("echo timed out")));
    };
    while (sent < Math.min(windowSize, ops)) one();
  });
  emit(ops, meter.stop(), { window: windowSize });
}

async function fanout(socket) {
  const channel = socket.channel(topic, {});
  let events = 0;
  let meter;
  const all = new Promise((resolve) => {
    channel.on("broadcasted", () => {
      events += 1;
      if (events === ops) resolve();
    });
  });
  await join(channel);
  meter = new Meter();
  process.stdout.write("ready\n");
  await all;
  emit(events, meter.stop(), { sent: ops, lost: 0 });
}

async function channels(socket) {
  globalThis.gc?.();
  const before = process.memoryUsage().rss;
  const meter = new Meter();
  const joins = [];
  const handles = [];
  for (let i = 1; i <= ops; i++) {
    const channel = socket.channel(`${topic}:${i}`, {});
    handles.push(channel);
    joins.push(join(channel));
  }
  await Promise.all(joins);
  const times = meter.stop();
  globalThis.gc?.();
  const after = process.memoryUsage().rss;
  emit(ops, times, { mem_per_channel_bytes: Math.max(after - before, 0) / ops });
}

const workloads = { sequential, pipelined, fanout, channels };
try {
  if (!workloads[workload]) throw new Error(`unknown workload ${workload}`);
  deadline(workload);
  const socket = await connect();
  await workloads[workload](socket);
} catch (error) {
  fail(error);
}

// Cross-check of the Dust store channel over MessagePack (vsn 3.0.0): the official phoenix.js
// client (npm `phoenix`, transport from `ws`) with `encode`/`decode` on `msgpackr` (what Dust's
// TypeScript SDK uses) joins a store at /ws/sync, writes, receives events, catches up, rolls
// back; a JSON client beside it sees the same store.
//
// Run through ./run.sh, or: DUST_CONFORMANCE_BIN=/path/to/dust-conformance-server node --test
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { Packr, Unpackr } from "msgpackr";
import { Socket } from "phoenix";
import WebSocket from "ws";

import { ServerProcess, T, withTimeout } from "./harness.mjs";

const TOKEN = "dust_tok_crosscheck";
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false });
// Decodes maps as `Map`s, to see the type of each key as the server wrote it.
const mapUnpackr = new Unpackr({ useRecords: false, mapsAsObjects: false });

let server;
let syncUrl;
const sockets = [];

/**
 * A phoenix.js socket on /ws/sync: MessagePack (vsn 3.0.0) unless `json`. `frames` collects
 * every frame the server sent (binary ones as bytes).
 */
async function connected(deviceId, { json = false } = {}) {
  const frames = [];
  const options = {
    transport: WebSocket,
    params: { token: TOKEN, device_id: deviceId, capver: 3 },
    rejoinAfterMs: () => 100,
  };
  if (!json) {
    Object.assign(options, {
      vsn: "3.0.0",
      encode: (msg, callback) =>
        callback(packr.pack([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload])),
      decode: (raw, callback) => {
        if (typeof raw === "string") {
          frames.push(raw);
          const [join_ref, ref, topic, event, payload] = JSON.parse(raw);
          return callback({ join_ref, ref, topic, event, payload });
        }
        const bytes = new Uint8Array(raw);
        frames.push(bytes);
        const [join_ref, ref, topic, event, payload] = unpackr.unpack(bytes);
        return callback({ join_ref, ref, topic, event, payload });
      },
    });
  } else {
    options.decode = (raw, callback) => {
      frames.push(raw);
      const [join_ref, ref, topic, event, payload] = JSON.parse(raw);
      return callback({ join_ref, ref, topic, event, payload });
    };
  }
  const socket = new Socket(syncUrl, options);
  sockets.push(socket);
  const opened = new Promise((res) => socket.onOpen(res));
  socket.connect();
  await withTimeout(opened, T, "socket open");
  return { socket, frames };
}

/** Joins a store with last_store_seq; `caughtUp()` resolves with the frames up to
 * catch_up_complete and its through_seq. */
function joinStore(socket, topic, lastSeq) {
  const channel = socket.channel(topic, () => ({ last_store_seq: lastSeq }));
  const pushed = [];
  const done = new Promise((res) => {
    channel.on("event", (payload) => pushed.push(["event", payload]));
    channel.on("catch_up_complete", (payload) => res(payload.through_seq));
  });
  const joined = new Promise((res, rej) => {
    channel.join().receive("ok", res).receive("error", rej).receive("timeout", rej);
  });
  return {
    channel,
    reply: withTimeout(joined, T, `join ${topic}`),
    caughtUp: () =>
      withTimeout(done, T, `catch-up of ${topic}`).then((through) => ({ through, pushed })),
  };
}

function push(channel, event, payload) {
  return withTimeout(
    new Promise((res) => {
      channel
        .push(event, payload, T)
        .receive("ok", (response) => res({ status: "ok", response }))
        .receive("error", (response) => res({ status: "error", response }))
        .receive("timeout", () => res({ status: "timeout" }));
    }),
    T + 1000,
    `push ${event}`,
  );
}

function nextEvent(channel) {
  return withTimeout(
    new Promise((res) => {
      const ref = channel.on("event", (payload) => {
        channel.off("event", ref);
        res(payload);
      });
    }),
    T,
    "event",
  );
}

function write(op, segments, value, clientOpId) {
  return { op, path: segments.join("/"), path_segments: segments, value, client_op_id: clientOpId };
}

/** The last binary frame whose event is `event`, decoded with `Map`s. */
function lastRaw(frames, event) {
  for (let i = frames.length - 1; i >= 0; i--) {
    if (typeof frames[i] === "string") continue;
    const decoded = mapUnpackr.unpack(frames[i]);
    if (decoded[3] === event) return decoded;
  }
  throw new Error(`no binary ${event} frame`);
}

before(async () => {
  server = await ServerProcess.start({
    args: ["--token", TOKEN, "--store", "acme/mp"],
    path: "/ws/sync",
  });
  syncUrl = server.url;
});

after(async () => {
  for (const socket of sockets) socket.disconnect();
  await server?.stop();
});

describe("dust store channel over MessagePack (vsn 3.0.0)", () => {
  test("join, write, the event before the reply, catch-up: all in binary MessagePack frames", async () => {
    const a = await connected("mp_a");
    const { channel, reply, caughtUp } = joinStore(a.socket, "store:acme/mp", 0);
    const joined = await reply;
    assert.equal(joined.store_seq, 0);
    assert.equal(joined.capver, 3);
    assert.deepEqual(joined.permissions, { read: true, write: true });
    assert.deepEqual(await caughtUp(), { through: 0, pushed: [] });
    assert.ok(a.frames.length >= 2 && a.frames.every((f) => f instanceof Uint8Array));

    const order = [];
    const echoed = nextEvent(channel).then((e) => (order.push("event"), e));
    const replied = push(channel, "write", write("set", ["posts", "p1"], { t: 1 }, "op_1")).then(
      (r) => (order.push("reply"), r),
    );
    assert.deepEqual(await replied, { status: "ok", response: { store_seq: 1 } });
    assert.deepEqual(await echoed, {
      store_seq: 1,
      op: "set",
      path: "posts/p1",
      path_segments: ["posts", "p1"],
      value: { t: 1 },
      device_id: "mp_a",
      client_op_id: "op_1",
    });
    assert.deepEqual(order, ["event", "reply"]);
    // The broadcast is [nil, nil, topic, "event", payload].
    const raw = lastRaw(a.frames, "event");
    assert.equal(raw[0], null);
    assert.equal(raw[1], null);
    assert.deepEqual(await push(channel, "write", write("increment", ["n"], 2, "op_2")), {
      status: "ok",
      response: { store_seq: 2 },
    });
    assert.deepEqual(await push(channel, "write", write("set", [], 1, "op_bad")), {
      status: "error",
      response: { reason: "empty_path" },
    });

    // Another MessagePack device catches up from seq 1 and then gets live events.
    const b = await connected("mp_b");
    const late = joinStore(b.socket, "store:acme/mp", 1);
    assert.equal((await late.reply).store_seq, 2);
    const { through, pushed } = await late.caughtUp();
    assert.equal(through, 2);
    assert.deepEqual(pushed, [
      [
        "event",
        {
          store_seq: 2,
          op: "increment",
          path: "n",
          path_segments: ["n"],
          value: 2,
          device_id: "mp_a",
          client_op_id: "op_2",
        },
      ],
    ]);
    const live = nextEvent(late.channel);
    await push(channel, "write", write("increment", ["n"], 1, "op_3"));
    assert.equal((await live).value, 3);
    a.socket.disconnect();
    b.socket.disconnect();
  });

  test("MessagePack values: bin, integer keys, timestamps, invalid UTF-8", async () => {
    const a = await connected("mp_c");
    const j = await connected("json_c", { json: true });
    const mp = joinStore(a.socket, "store:acme/values", 0);
    const js = joinStore(j.socket, "store:acme/values", 0);
    await mp.reply;
    await mp.caughtUp();
    await js.reply;
    await js.caughtUp();

    // A bin value comes back as a string, to both.
    let mpEvent = nextEvent(mp.channel);
    let jsEvent = nextEvent(js.channel);
    const bin = Buffer.from("hi");
    assert.deepEqual(await push(mp.channel, "write", write("set", ["b"], bin, "v1")), {
      status: "ok",
      response: { store_seq: 1 },
    });
    assert.equal((await mpEvent).value, "hi");
    assert.equal((await jsEvent).value, "hi");

    // Integer keys: as sent to MessagePack joiners, as strings to JSON ones.
    mpEvent = nextEvent(mp.channel);
    jsEvent = nextEvent(js.channel);
    const keyed = new Map([
      [1, "one"],
      ["k", 2],
    ]);
    await push(mp.channel, "write", write("set", ["m"], keyed, "v2"));
    await mpEvent;
    const raw = lastRaw(a.frames, "event");
    assert.deepEqual([...raw[4].get("value").entries()], [...keyed.entries()]);
    assert.deepEqual((await jsEvent).value, { 1: "one", k: 2 });

    // A timestamp: a Date back to MessagePack joiners, an ISO-8601 string to JSON ones.
    mpEvent = nextEvent(mp.channel);
    jsEvent = nextEvent(js.channel);
    const when = new Date("2026-01-02T03:04:05.678Z");
    await push(mp.channel, "write", write("set", ["t"], when, "v3"));
    const back = (await mpEvent).value;
    assert.ok(back instanceof Date, `a Date, got ${back}`);
    assert.equal(back.getTime(), when.getTime());
    assert.equal((await jsEvent).value, "2026-01-02T03:04:05.678000Z");

    // Invalid UTF-8 in a bin: an error reply, no seq used.
    const bad = await push(mp.channel, "write", write("set", ["x"], Buffer.from([0xff, 0xfe]), "v4"));
    assert.equal(bad.status, "error");
    assert.deepEqual(await push(mp.channel, "write", write("set", ["y"], 1, "v5")), {
      status: "ok",
      response: { store_seq: 4 },
    });

    // In a catch-up the integer keys are strings, to MessagePack clients too.
    const c = await connected("mp_d");
    const late = joinStore(c.socket, "store:acme/values", 1);
    await late.reply;
    const { pushed } = await late.caughtUp();
    assert.deepEqual(pushed[0][1].value, { 1: "one", k: 2 });
    const caught = c.frames
      .filter((f) => typeof f !== "string")
      .map((f) => mapUnpackr.unpack(f))
      .find((m) => m[3] === "event" && m[4].get("store_seq") === 2);
    assert.deepEqual([...caught[4].get("value").keys()], ["1", "k"]);
    // A timestamp stored as a datetime comes back as a timestamp in a MessagePack catch-up.
    const stamped = pushed.find(([, p]) => p.store_seq === 3)[1].value;
    assert.ok(stamped instanceof Date, `a Date, got ${stamped}`);
    assert.equal(stamped.getTime(), when.getTime());
    for (const s of [a, j, c]) s.socket.disconnect();
  });

  test("rollback of a path and of the store, and status", async () => {
    const a = await connected("mp_e");
    const { channel, reply, caughtUp } = joinStore(a.socket, "store:acme/rb", 0);
    await reply;
    await caughtUp();
    await push(channel, "write", write("set", ["a"], 1, "r1"));
    await push(channel, "write", write("set", ["a"], 2, "r2"));
    await push(channel, "write", write("set", ["b"], 3, "r3"));

    const event = nextEvent(channel);
    assert.deepEqual(await push(channel, "rollback", { path: "a", to_seq: 1 }), {
      status: "ok",
      response: { store_seq: 4 },
    });
    assert.deepEqual(await event, {
      store_seq: 4,
      op: "set",
      path: "a",
      path_segments: ["a"],
      value: 1,
      device_id: "system:rollback",
      client_op_id: "rollback:1:a",
    });
    assert.deepEqual(await push(channel, "rollback", { path: "a", to_seq: 1 }), {
      status: "ok",
      response: { store_seq: 4, noop: true },
    });
    assert.deepEqual(await push(channel, "rollback", { to_seq: 0 }), {
      status: "error",
      response: { reason: "beyond_retention" },
    });
    // The whole store back to seq 2: delete b (seq 5), set a to 2 (seq 6); no event.
    assert.deepEqual(await push(channel, "rollback", { to_seq: 2 }), {
      status: "ok",
      response: { ops_written: 2 },
    });
    const status = await push(channel, "status", {});
    assert.equal(status.status, "ok");
    assert.equal(status.response.current_seq, 6);
    assert.equal(status.response.entry_count, 1);
    assert.deepEqual(
      status.response.recent_ops.map((o) => [o.store_seq, o.op, o.path]),
      [
        [6, "set", "a"],
        [5, "delete", "b"],
        [4, "set", "a"],
        [3, "set", "b"],
        [2, "set", "a"],
      ],
    );
    a.socket.disconnect();
  });
});

// Cross-check of the Dust store channel: the official phoenix.js client (npm `phoenix`,
// transport from `ws`) joins a store at /ws/sync with the Dust connect params, writes,
// receives the echo `event`, and catches up from a seq.
//
// Run through ./run.sh, or: DUST_CONFORMANCE_BIN=/path/to/dust-conformance-server node --test
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { Socket } from "phoenix";
import WebSocket from "ws";

import { ServerProcess, T, withTimeout } from "./harness.mjs";

const TOKEN = "dust_tok_crosscheck";

let server;
let syncUrl;
const sockets = [];

/** A phoenix.js socket on /ws/sync with the Dust connect params. */
async function connected(deviceId, token = TOKEN) {
  const socket = new Socket(syncUrl, {
    transport: WebSocket,
    params: { token, device_id: deviceId, capver: 3 },
    rejoinAfterMs: () => 100,
  });
  sockets.push(socket);
  const opened = new Promise((res) => socket.onOpen(res));
  socket.connect();
  await withTimeout(opened, T, "socket open");
  return socket;
}

/**
 * Joins a store with last_store_seq: `reply` resolves with the join reply, `caughtUp()` with the
 * frames pushed up to catch_up_complete (events, snapshot) and its through_seq.
 */
function joinStore(socket, topic, lastSeq) {
  const channel = socket.channel(topic, () => ({ last_store_seq: lastSeq }));
  const pushed = [];
  const done = new Promise((res) => {
    channel.on("event", (payload) => pushed.push(["event", payload]));
    channel.on("snapshot", (payload) => pushed.push(["snapshot", payload]));
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

function write(op, segments, value, clientOpId) {
  return {
    op,
    path: segments.map((s) => s.replaceAll("~", "~0").replaceAll("/", "~1")).join("/"),
    path_segments: segments,
    value,
    client_op_id: clientOpId,
  };
}

before(async () => {
  server = await ServerProcess.start({
    args: ["--token", TOKEN, "--store", "acme/cross"],
    path: "/ws/sync",
  });
  syncUrl = server.url;
});

after(async () => {
  for (const socket of sockets) socket.disconnect();
  await server?.stop();
});

describe("dust store channel", () => {
  test("connect refusals: phoenix.js sees errors, never opens", async () => {
    const socket = new Socket(syncUrl, {
      transport: WebSocket,
      params: { token: "not_a_dust_token", device_id: "dev_x", capver: 3 },
    });
    sockets.push(socket);
    const errored = new Promise((res) => socket.onError(res));
    let opened = false;
    socket.onOpen(() => (opened = true));
    socket.connect();
    await withTimeout(errored, T, "socket error");
    assert.equal(opened, false);
    socket.disconnect();
  });

  test("join reply, write, echo event before the reply, catch-up from a seq", async () => {
    const a = await connected("dev_a");
    const { channel, reply, caughtUp } = joinStore(a, "store:acme/cross", 0);
    const joined = await reply;
    assert.equal(joined.store_seq, 0);
    assert.equal(joined.capver, 3);
    assert.equal(joined.capver_min, 3);
    assert.deepEqual(joined.permissions, { read: true, write: true });
    assert.deepEqual(joined.store_access, { mode: "all", store_ids: [] });
    assert.ok(joined.scopes.includes("entries:write"));
    assert.deepEqual(await caughtUp(), { through: 0, pushed: [] });

    const order = [];
    const echoed = new Promise((res) => {
      const ref = channel.on("event", (payload) => {
        order.push("event");
        channel.off("event", ref);
        res(payload);
      });
    });
    const replied = push(channel, "write", write("set", ["posts", "a/b"], { t: 1 }, "op_1")).then(
      (r) => (order.push("reply"), r),
    );
    assert.deepEqual(await replied, { status: "ok", response: { store_seq: 1 } });
    assert.deepEqual(await withTimeout(echoed, T, "echo"), {
      store_seq: 1,
      op: "set",
      path: "posts/a~1b",
      path_segments: ["posts", "a/b"],
      value: { t: 1 },
      device_id: "dev_a",
      client_op_id: "op_1",
    });
    assert.deepEqual(order, ["event", "reply"]);
    assert.deepEqual(await push(channel, "write", write("increment", ["n"], 2, "op_2")), {
      status: "ok",
      response: { store_seq: 2 },
    });
    assert.deepEqual(await push(channel, "write", write("set", [], 1, "op_bad")), {
      status: "error",
      response: { reason: "empty_path" },
    });
    assert.deepEqual(await push(channel, "ack_seq", { seq: 2 }), { status: "ok", response: {} });

    // Another device catches up from seq 1: one event, through_seq 2.
    const b = await connected("dev_b");
    const late = joinStore(b, "store:acme/cross", 1);
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
          device_id: "dev_a",
          client_op_id: "op_2",
        },
      ],
    ]);
    // Live events reach the other joiner.
    const live = new Promise((res) => late.channel.on("event", res));
    await push(channel, "write", write("increment", ["n"], 1, "op_3"));
    assert.equal((await withTimeout(live, T, "live event")).value, 3);
    a.disconnect();
    b.disconnect();
  });

  test("snapshot after compaction, then the tail", async () => {
    const a = await connected("dev_c");
    const { channel, reply, caughtUp } = joinStore(a, "store:acme/snap", 0);
    await reply;
    await caughtUp();
    await push(channel, "write", write("set", ["k"], "v", "s1"));
    await push(channel, "write", write("set", ["m"], 1, "s2"));
    assert.equal((await server.cmd({ cmd: "compact", store: "acme/snap" })).snapshot_seq, 2);
    await push(channel, "write", write("set", ["k"], "w", "s3"));
    const b = await connected("dev_d");
    const late = joinStore(b, "store:acme/snap", 0);
    await late.reply;
    const { through, pushed } = await late.caughtUp();
    assert.equal(through, 3);
    assert.deepEqual(pushed[0], [
      "snapshot",
      {
        snapshot_seq: 2,
        entries: {
          k: { value: { _scalar: "v" }, type: "string" },
          m: { value: { _scalar: 1 }, type: "integer" },
        },
      },
    ]);
    assert.equal(pushed[1][1].store_seq, 3);
    a.disconnect();
    b.disconnect();
  });

  test("join errors reach the join's error callback", async () => {
    const a = await connected("dev_e");
    const { reply } = joinStore(a, "store:notauuid", 0);
    await assert.rejects(reply, (e) => e.reason === "join crashed");
    a.disconnect();
  });

  test("a restart drops the socket; phoenix.js reconnects, rejoins and catches up", async () => {
    const a = await connected("dev_f");
    let lastSeq = 0;
    const channel = a.channel("store:acme/cross", () => ({ last_store_seq: lastSeq }));
    const completes = [];
    let onComplete;
    channel.on("event", (p) => (lastSeq = p.store_seq));
    channel.on("catch_up_complete", (p) => {
      completes.push(p.through_seq);
      onComplete?.();
    });
    const waitComplete = (n) =>
      withTimeout(
        new Promise((res) => {
          if (completes.length >= n) return res();
          onComplete = () => completes.length >= n && res();
        }),
        T,
        `catch_up_complete #${n}`,
      );
    channel.join();
    await waitComplete(1);
    const seq = completes[0];
    assert.ok(seq >= 3);
    await server.cmd({ cmd: "restart", downtime_ms: 50 });
    await waitComplete(2);
    // The rejoin used the seq the client had: nothing to send, its own seq back.
    assert.equal(completes[1], seq);
    assert.deepEqual(await push(channel, "write", write("increment", ["n"], 1, "op_f")), {
      status: "ok",
      response: { store_seq: seq + 1 },
    });
    a.disconnect();
  });
});

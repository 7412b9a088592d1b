// Cross-check of the `presence:*` channel: the official phoenix.js `Presence` (npm `phoenix`,
// transport from `ws`) on several sockets must converge on the server's list and see every
// join and leave, through leaves, drops with automatic rejoins, a key on two sockets and a
// meta update.
//
// Run through ./run.sh, or: DUST_CONFORMANCE_BIN=/path/to/dust-conformance-server node --test
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";

import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import { Counter, ServerProcess, T, withTimeout } from "./harness.mjs";

let server;
const sockets = [];

const refs = (presence) => (presence ? presence.metas.map((m) => m.phx_ref) : undefined);

/** A presence list with each key's metas sorted by phx_ref, keys sorted. */
function normalize(state) {
  const out = {};
  for (const key of Object.keys(state).sort()) {
    out[key] = [...state[key].metas].sort((a, b) => (a.phx_ref < b.phx_ref ? -1 : 1));
  }
  return out;
}

/**
 * A phoenix.js socket (connect param `who`) with a channel on `topic` and a `Presence` on it;
 * every onJoin / onLeave is recorded, and `until` waits for the list on each onSync.
 */
class Peer {
  constructor(name, topic, params) {
    this.name = name;
    this.socket = new Socket(server.url, {
      transport: WebSocket,
      params: { who: name },
      rejoinAfterMs: () => 100,
    });
    sockets.push(this.socket);
    this.channel = this.socket.channel(topic, params);
    this.presence = new Presence(this.channel);
    this.joins = new Counter(`${name} onJoin`);
    this.leaves = new Counter(`${name} onLeave`);
    this.joinOks = new Counter(`${name} join ok`);
    this.syncs = [];
    this.presence.onJoin((key, current, joined) =>
      this.joins.hit({ key, current: refs(current), joined: refs(joined) }),
    );
    this.presence.onLeave((key, current, left) =>
      this.leaves.hit({ key, remaining: refs(current), left: refs(left) }),
    );
    this.presence.onSync(() => {
      this.syncs = this.syncs.filter(([predicate, res]) => (predicate(this.list()) ? (res(), false) : true));
    });
    this.channel.join().receive("ok", (r) => this.joinOks.hit(r));
    this.socket.connect();
  }

  /** The list as phoenix.js's Presence has it, normalized. */
  list() {
    return normalize(this.presence.state);
  }

  /** Waits until the list satisfies `predicate` (checked now and on every onSync). */
  async until(label, predicate) {
    if (!predicate(this.list())) {
      await withTimeout(
        new Promise((res) => this.syncs.push([predicate, res])),
        T,
        `${this.name}: ${label} (list ${JSON.stringify(this.list())})`,
      );
    }
    return this.list();
  }

  keys(...keys) {
    return this.until(`keys ${keys}`, (list) => isDeepStrictEqual(Object.keys(list), keys));
  }

  /** The server's list, through the channel's `presence_list` event. */
  serverList() {
    return withTimeout(
      new Promise((res, rej) =>
        this.channel
          .push("presence_list", {})
          .receive("ok", (state) => res(normalize(state)))
          .receive("error", rej),
      ),
      T,
      "presence_list",
    );
  }

  /** The server's id of this socket's connection. */
  async connectionId() {
    const { connections } = await server.cmd({ cmd: "connections" });
    return connections.find((c) => c.params.who === this.name).id;
  }
}

before(async () => {
  server = await ServerProcess.start();
});

after(async () => {
  for (const socket of sockets) socket.disconnect();
  await server?.stop();
});

describe("phoenix.js Presence", () => {
  test("two sockets converge on the server's list; the joiner's own join comes from the state, then its diff", async () => {
    const ada = new Peer("ada", "presence:room", { user: "ada", device: "laptop" });
    const first = await ada.keys("ada");
    const adaRef = first.ada[0].phx_ref;
    assert.deepEqual(first.ada, [{ device: "laptop", phx_ref: adaRef }]);
    // presence_state: a new key; then the broadcast diff of the same meta: onJoin again, with
    // the current presence, and still one meta.
    assert.deepEqual(await ada.joins.reach(1), { key: "ada", current: undefined, joined: [adaRef] });
    assert.deepEqual(await ada.joins.reach(2), { key: "ada", current: [adaRef], joined: [adaRef] });
    assert.deepEqual(ada.list(), first);

    const bob = new Peer("bob", "presence:room", { user: "bob" });
    const listB = await bob.keys("ada", "bob");
    const listA = await ada.keys("ada", "bob");
    assert.deepEqual(listA, listB);
    assert.deepEqual(listA, await bob.serverList());
    assert.deepEqual(await ada.joins.reach(3), {
      key: "bob",
      current: undefined,
      joined: [listA.bob[0].phx_ref],
    });
    assert.equal(ada.leaves.values.length, 0);
  });

  test("a leave is an onLeave on the other socket", async () => {
    const ada = new Peer("ada2", "presence:leave", { user: "ada" });
    await ada.keys("ada");
    const bob = new Peer("bob2", "presence:leave", { user: "bob" });
    const both = await bob.keys("ada", "bob");
    await ada.keys("ada", "bob");
    await withTimeout(new Promise((res) => bob.channel.leave().receive("ok", res)), T, "leave");
    assert.deepEqual(await ada.leaves.reach(1), {
      key: "bob",
      remaining: [],
      left: [both.bob[0].phx_ref],
    });
    const after = await ada.keys("ada");
    assert.deepEqual(after, await ada.serverList());
  });

  test("a dropped socket leaves, and joins again with a new ref after phoenix.js rejoins", async () => {
    const ada = new Peer("ada3", "presence:drop", { user: "ada" });
    await ada.keys("ada");
    const bob = new Peer("bob3", "presence:drop", { user: "bob" });
    const before = await bob.keys("ada", "bob");
    await ada.keys("ada", "bob");
    const oldRef = before.bob[0].phx_ref;
    const joinsBefore = ada.joins.values.length;

    await server.cmd({ cmd: "drop", id: await bob.connectionId() });
    assert.deepEqual(await ada.leaves.reach(1), { key: "bob", remaining: [], left: [oldRef] });
    const back = await ada.joins.reach(joinsBefore + 1);
    assert.equal(back.key, "bob");
    assert.equal(back.current, undefined);
    assert.notDeepEqual(back.joined, [oldRef]);
    const newRef = back.joined[0];

    // Bob's Presence reconciled its list with the rejoin's presence_state: its old meta left.
    await bob.joinOks.reach(2);
    const after = await bob.until("bob's new ref", (l) => l.bob?.[0]?.phx_ref === newRef);
    assert.ok(
      bob.leaves.values.some(
        (l) => l.key === "bob" && l.left[0] === oldRef && l.remaining.includes(newRef),
      ),
      `bob's leaves: ${JSON.stringify(bob.leaves.values)}`,
    );
    assert.deepEqual(await ada.keys("ada", "bob"), after);
    assert.deepEqual(after, await ada.serverList());
    assert.deepEqual(after.ada, before.ada);
  });

  test("drop_all: both rejoin and converge, no ghost left", async () => {
    const ada = new Peer("ada4", "presence:drop_all", { user: "ada" });
    const bob = new Peer("bob4", "presence:drop_all", { user: "bob" });
    const before = await ada.keys("ada", "bob");
    await bob.keys("ada", "bob");
    await server.cmd({ cmd: "drop_all" });
    const fresh = (l) =>
      Object.keys(l).length === 2 &&
      l.ada?.length === 1 &&
      l.bob?.length === 1 &&
      l.ada[0].phx_ref !== before.ada[0].phx_ref &&
      l.bob[0].phx_ref !== before.bob[0].phx_ref;
    const listA = await ada.until("both rejoined", fresh);
    const listB = await bob.until("both rejoined", fresh);
    assert.deepEqual(listA, listB);
    assert.deepEqual(listA, await bob.serverList());
  });

  test("a key on two sockets has two metas; it stays while one remains", async () => {
    const laptop = new Peer("laptop5", "presence:devices", { user: "ada", device: "laptop" });
    await laptop.keys("ada");
    const phone = new Peer("phone5", "presence:devices", { user: "ada", device: "phone" });
    const bob = new Peer("bob5", "presence:devices", { user: "bob" });
    const list = await bob.until("ada twice", (l) => l.ada?.length === 2 && l.bob !== undefined);
    assert.deepEqual(list, await phone.serverList());
    const laptopRef = list.ada.find((m) => m.device === "laptop").phx_ref;
    const phoneRef = list.ada.find((m) => m.device === "phone").phx_ref;
    // The second meta joined a present key: onJoin with the current presence.
    await laptop.until("ada twice", (l) => l.ada?.length === 2);
    const adaJoins = laptop.joins.values.filter((j) => j.key === "ada" && j.current !== undefined);
    assert.ok(
      adaJoins.some((j) => j.joined[0] === phoneRef && j.current.includes(laptopRef)),
      JSON.stringify(laptop.joins.values),
    );

    await withTimeout(new Promise((res) => laptop.channel.leave().receive("ok", res)), T, "leave");
    assert.deepEqual(await bob.leaves.reach(1), { key: "ada", remaining: [phoneRef], left: [laptopRef] });
    const after = await bob.until("ada once", (l) => l.ada?.length === 1);
    assert.equal(after.ada[0].device, "phone");
    assert.deepEqual(after, await phone.serverList());
  });

  test("update: one diff joins the new meta and leaves the old one", async () => {
    const ada = new Peer("ada6", "presence:status", { user: "ada", status: "online" });
    await ada.keys("ada");
    const bob = new Peer("bob6", "presence:status", { user: "bob" });
    const before = await bob.keys("ada", "bob");
    await ada.keys("ada", "bob");
    const oldRef = before.ada[0].phx_ref;
    // Bob's joins so far: ada and bob from the state, then bob's own diff.
    const joinsBefore = 3;
    assert.equal((await bob.joins.reach(joinsBefore)).key, "bob");
    const newRef = await withTimeout(
      new Promise((res) =>
        ada.channel.push("update", { status: "away" }).receive("ok", (r) => res(r.phx_ref)),
      ),
      T,
      "update",
    );
    assert.deepEqual(await bob.joins.reach(joinsBefore + 1), {
      key: "ada",
      current: [oldRef],
      joined: [newRef],
    });
    assert.deepEqual(await bob.leaves.reach(1), { key: "ada", remaining: [newRef], left: [oldRef] });
    const expected = [{ status: "away", phx_ref: newRef, phx_ref_prev: oldRef }];
    const away = (l) => isDeepStrictEqual(l.ada, expected);
    const after = await bob.until("ada away", away);
    assert.deepEqual(await ada.until("ada away", away), after);
    assert.deepEqual(after, await ada.serverList());
  });
});

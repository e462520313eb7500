import test from "node:test";
import assert from "node:assert/strict";

import lib from "../dist/index.js";
const { Subscriber, TaggedCache, Watermark, OffsetTracker } = lib;

const record = (lsn, fields = {}) => JSON.stringify({ v: 1, lsn, commit_ts: "2026-11-22T10:00:00.123456Z", xids: [1], keys: [], tags: [], patterns: [], ...fields });

function filled() {
  const cache = new TaggedCache();
  cache.set("product:1", 1, { tags: ["category:3"] });
  cache.set("product:2", 2, { tags: ["category:3"] });
  cache.set("product:3", 3, { tags: ["category:4"] });
  cache.set("product-list:3:page:1", "l3");
  cache.set("user:1", "u1");
  return cache;
}

test("applies keys, tags and patterns and advances the watermark", () => {
  const cache = filled();
  const sub = new Subscriber({ cache });
  const applied = [];
  sub.on("applied", (r, removed) => applied.push([r.lsn, removed]));
  sub.handle(record("0/100", { keys: ["product:3"], tags: ["category:3"], patterns: ["product-list:3:*"] }));
  assert.deepEqual([...cache.keys()], ["user:1"]);
  assert.deepEqual(applied, [["0/100", 4]]);
  assert.equal(sub.watermark.currentText, "0/100");
  // Delivered again, and an older one: harmless, the watermark never moves back.
  sub.handle(record("0/100", { keys: ["product:3"] }));
  sub.handle(record("0/50", { keys: ["nothing"] }));
  assert.equal(sub.watermark.currentText, "0/100");
  assert.equal(sub.stats.applied, 3);
  assert.equal(sub.stats.removed, 4);
});

test("the flush-all pattern clears the cache", () => {
  const cache = filled();
  const sub = new Subscriber({ cache });
  sub.handle(record("0/1", { patterns: ["*"] }));
  assert.equal(cache.size, 0);
  assert.equal(sub.stats.flushes, 1);
});

test("refused records are counted and never applied", () => {
  const cache = filled();
  const sub = new Subscriber({ cache });
  const refusals = [];
  sub.on("refused", (e) => refusals.push(e.kind));
  assert.equal(sub.handle(JSON.stringify({ v: 2, lsn: "0/9", keys: ["product:1"], patterns: ["*"] })), undefined);
  sub.handle("garbage");
  sub.handle(Buffer.from('{"v":1,"lsn":"0/9","keys":"product:1"}'));
  assert.equal(cache.size, 5, "nothing removed");
  assert.equal(sub.watermark.current, undefined, "the watermark did not move");
  assert.deepEqual(refusals, ["version", "malformed", "malformed"]);
  assert.deepEqual(sub.stats, { records: 3, applied: 0, refused: 1, malformed: 2, gaps: 0, removed: 0, flushes: 0 });
});

test("a gap clears the cache and is counted", () => {
  const cache = filled();
  const sub = new Subscriber({ cache });
  const gaps = [];
  sub.on("gap", (reason) => gaps.push(reason));
  sub.gap("test");
  assert.equal(cache.size, 0);
  assert.equal(sub.stats.gaps, 1);
  assert.deepEqual(gaps, ["test"]);
});

test("watermark: waitFor resolves at or past the position, false on timeout", async () => {
  const w = new Watermark();
  assert.equal(w.current, undefined);
  assert.equal(w.passed("0/1"), false);
  const early = w.waitFor("0/200", 5000);
  const exact = w.waitFor(0x150n, 5000);
  const late = w.waitFor("1/0", 50);
  assert.equal(w.waiting, 3);
  assert.ok(w.advance("0/150"));
  assert.equal(await exact, true);
  assert.ok(!w.advance("0/100"), "never moves back");
  assert.equal(w.currentText, "0/150");
  assert.ok(w.advance("0/FFFFFFFF"));
  assert.equal(await early, true);
  assert.equal(await late, false, "1/0 is past 0/FFFFFFFF (64-bit compare)");
  assert.equal(w.waiting, 0);
  assert.equal(await w.waitFor("0/10", 0), true, "already passed");
  assert.throws(() => w.waitFor("nonsense", 10), RangeError);
  // Through a subscriber: read-your-writes.
  const sub = new Subscriber({ cache: new TaggedCache(), watermark: w });
  const pending = w.waitFor("2/0", 5000);
  setTimeout(() => sub.handle(record("2/10")), 10);
  assert.equal(await pending, true);
});

test("offset tracker: a batch past the expected offset is a gap, an earlier one a replay", () => {
  const t = new OffsetTracker();
  assert.equal(t.skips(0, "100"), false, "nothing known: no gap");
  t.committed(0, "-1");
  assert.equal(t.skips(0, "100"), false, "no committed offset: no gap");
  t.committed(0, "10");
  assert.equal(t.skips(0, "10"), false);
  assert.equal(t.skips(0, "5"), false, "replay");
  assert.equal(t.skips(0, "11"), true, "offset 10 was never applied");
  t.applied(0, "10");
  assert.equal(t.expected(0), 11n);
  assert.equal(t.skips(0, "11"), false);
  assert.equal(t.skips(1, "11"), false, "per partition");
  assert.equal(t.skips(0, "9007199254740993"), true, "offsets are 64-bit");
  // Started again after offsets were moved forward: what was applied wins.
  t.committed(0, "500");
  assert.equal(t.expected(0), 11n);
  assert.equal(t.skips(0, "500"), true);
  t.committed(3, "500");
  assert.equal(t.expected(3), 500n, "a partition never applied starts at the committed offset");
});

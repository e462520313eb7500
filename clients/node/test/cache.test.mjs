import test from "node:test";
import assert from "node:assert/strict";

import lib from "../dist/index.js";
const { TaggedCache } = lib;

test("behaves like a Map", () => {
  const c = new TaggedCache();
  assert.equal(c.size, 0);
  assert.equal(c.set("a", 1), c, "set chains");
  c.set("b", 2).set("c", 3);
  assert.equal(c.get("a"), 1);
  assert.equal(c.get("x"), undefined);
  assert.ok(c.has("b"));
  assert.equal(c.size, 3);
  assert.deepEqual([...c.keys()], ["b", "c", "a"], "least recently used first");
  assert.deepEqual([...c.values()], [2, 3, 1]);
  assert.deepEqual([...c], [["b", 2], ["c", 3], ["a", 1]]);
  const seen = [];
  c.forEach((v, k) => seen.push(`${k}=${v}`));
  assert.deepEqual(seen, ["b=2", "c=3", "a=1"]);
  assert.ok(c.delete("b"));
  assert.ok(!c.delete("b"));
  assert.equal(c.size, 2);
  c.clear();
  assert.equal(c.size, 0);
  assert.equal(String(c), "[object TaggedCache]");
});

test("tag invalidation removes every entry of the tag, and only those", () => {
  const c = new TaggedCache();
  c.set("product:1", "p1", { tags: ["category:3", "products"] });
  c.set("product:2", "p2", { tags: ["category:4", "products"] });
  c.set("user:1", "u1", { tags: ["users"] });
  assert.equal(c.invalidateTags(["category:3"]), 1);
  assert.deepEqual([...c.keys()], ["product:2", "user:1"]);
  assert.equal(c.invalidateTags(["products", "nothing"]), 1);
  assert.deepEqual([...c.keys()], ["user:1"]);
  assert.deepEqual(c.keysOfTag("products"), []);
  assert.equal(c.tagCount, 1);
});

test("the tag index follows delete, overwrite and clear", () => {
  const c = new TaggedCache();
  c.set("k", 1, { tags: ["t1", "t2", "t1"] });
  assert.deepEqual(c.tagsOf("k"), ["t1", "t2"]);
  // Overwrite with other tags: the old ones no longer reach it.
  c.set("k", 2, { tags: ["t3"] });
  assert.equal(c.invalidateTags(["t1", "t2"]), 0);
  assert.equal(c.get("k"), 2);
  assert.deepEqual(c.keysOfTag("t1"), []);
  assert.equal(c.tagCount, 1);
  // Delete then re-add without tags: the old tag does not remove it.
  c.delete("k");
  assert.equal(c.tagCount, 0);
  c.set("k", 3);
  assert.equal(c.invalidateTags(["t3"]), 0);
  assert.ok(c.has("k"));
  c.set("j", 4, { tags: ["t"] });
  c.clear();
  assert.equal(c.tagCount, 0);
  c.set("j", 5);
  assert.equal(c.invalidateTags(["t"]), 0);
  assert.ok(c.has("j"));
});

test("key and pattern invalidation", () => {
  const c = new TaggedCache();
  for (const k of ["product:1", "product:2", "product-list:3:page:1", "product-list:4:page:1", "search:a*b:1", "search:aXb:1"]) {
    c.set(k, k);
  }
  assert.equal(c.invalidateKeys(["product:1", "product:9"]), 1);
  assert.equal(c.invalidatePatterns(["product-list:3:*"]), 1);
  assert.equal(c.invalidatePatterns(["search:a\\*b:*"]), 1, "an escaped value matches only itself");
  assert.deepEqual([...c.keys()], ["product:2", "product-list:4:page:1", "search:aXb:1"]);
  assert.equal(c.invalidatePatterns([]), 0);
  assert.equal(c.invalidatePatterns(["product:?", "nothing*"]), 1);
  assert.equal(c.invalidatePatterns(["x*", "*"]), 2, "* clears everything");
  assert.equal(c.size, 0);
});

test("bounded: evicts the least recently used", () => {
  const evicted = [];
  const c = new TaggedCache({ maxSize: 3, onEvict: (k, v) => evicted.push([k, v]) });
  c.set("a", 1, { tags: ["t"] }).set("b", 2).set("c", 3);
  c.get("a"); // a is now the most recently used
  c.set("d", 4);
  assert.deepEqual(evicted, [["b", 2]]);
  assert.deepEqual([...c.keys()], ["c", "a", "d"]);
  c.has("c"); // no use
  c.peek("c"); // no use
  c.set("e", 5);
  assert.deepEqual(evicted, [["b", 2], ["c", 3]]);
  c.set("f", 6);
  c.set("g", 7);
  assert.deepEqual(evicted.map(([k]) => k), ["b", "c", "a", "d"]);
  assert.equal(c.evictions, 4);
  assert.deepEqual(c.keysOfTag("t"), [], "an evicted entry leaves the tag index");
  assert.equal(c.size, 3);
  assert.throws(() => new TaggedCache({ maxSize: 0 }), RangeError);
});

// Shared by the end-to-end scripts that tests/node_subscriber.rs runs
// against a real walbust: the cache they fill, what an update of product 1
// must remove and keep, and the line protocol with the Rust side (this
// script prints a line when it is ready for the next step; the Rust side
// answers on stdin when it needs to).
import { createInterface } from "node:readline";

import lib from "../../dist/index.js";
export const { TaggedCache, RedisSubscriber, KafkaSubscriber } = lib;

/** Product 1: category 3, name `a*b?` (the rule escapes it in `search:{name}:*`). */
export const GONE_AFTER_PRODUCT_1 = ["product:1", "product:5", "search:a*b?:page:1", "search:a*b?:page:2"];
/** Unrelated: another key, tag, and keys an unescaped pattern would have matched. */
export const KEPT = ["product:2", "product:7", "search:aXb?:page:1", "search:a*bc:page:1", "search:x:page:1", "user:1"];

/** Fills `cache` with product 1's entries (by key, tag and pattern) and unrelated ones. */
export function fill(cache) {
  cache.set("product:1", { id: 1 }, { tags: ["category:3"] });
  cache.set("product:5", { id: 5 }, { tags: ["category:3"] }); // only its tag is invalidated
  cache.set("search:a*b?:page:1", [1]);
  cache.set("search:a*b?:page:2", [1]);
  cache.set("product:2", { id: 2 }, { tags: ["category:4"] });
  cache.set("product:7", { id: 7 }, { tags: ["category:7"] });
  cache.set("search:aXb?:page:1", []);
  cache.set("search:a*bc:page:1", []);
  cache.set("search:x:page:1", []);
  cache.set("user:1", { id: 1 });
}

/** Prints one protocol line. */
export function say(line) {
  process.stdout.write(`${line}\n`);
}

const lines = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on("line", (line) => {
  const w = waiting.shift();
  if (w) w(line);
  else pending.push(line);
});

/** The next line the Rust side sends. */
export function hear() {
  if (pending.length > 0) return Promise.resolve(pending.shift());
  return new Promise((resolve) => waiting.push(resolve));
}

/** Polls `check` every 20 ms until it holds; throws with `what` after `timeoutMs`. */
export async function until(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until product 1's entries are gone; throws if an unrelated one went. */
export async function expectProduct1Invalidated(cache, what) {
  await until(`${what}: product 1's entries to be invalidated (left: ${GONE_AFTER_PRODUCT_1.filter((k) => cache.has(k))})`, () =>
    GONE_AFTER_PRODUCT_1.every((k) => !cache.has(k)),
  );
  const lost = KEPT.filter((k) => !cache.has(k));
  if (lost.length > 0) throw new Error(`${what}: unrelated entries were removed: ${lost}`);
}

/** Runs `main`, prints `done <json>` and exits 0, or prints the error and exits 1. */
export function run(main) {
  main().then(
    (result) => {
      say(`done ${JSON.stringify(result, (_, v) => (typeof v === "bigint" ? v.toString() : v))}`);
      process.exit(0);
    },
    (err) => {
      process.stderr.write(`${err.stack ?? err}\n`);
      process.exit(1);
    },
  );
}

/** An environment variable the Rust side must set. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

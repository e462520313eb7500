// Redis glob semantics: a table of cases, the escaping walbust applies to
// row values in pattern templates, and a cross-check of random patterns
// against a real redis-server's KEYS.
import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";

import lib from "../dist/index.js";
const { globMatch, globEscape, Glob } = lib;

const CASES = [
  // pattern, key, matches
  ["*", "anything", true],
  ["*", "", false], // Redis: the loop never runs on an empty key
  ["", "", true],
  ["", "a", false],
  ["product:*", "product:42", true],
  ["product:*", "product:", true],
  ["product:*", "products:1", false],
  ["*:detail", "product:42:detail", true],
  ["*:detail", "product:42:details", false],
  ["a*b*c", "aXXbYYc", true],
  ["a*b*c", "aXXbYY", false],
  ["a**b", "ab", true],
  ["a*", "a", true],
  ["a*", "", false],
  ["h?llo", "hello", true],
  ["h?llo", "hllo", false],
  ["h??llo", "héllo", true], // é is two bytes in UTF-8
  ["h?llo", "héllo", false],
  ["h[ae]llo", "hallo", true],
  ["h[ae]llo", "hillo", false],
  ["h[^e]llo", "hallo", true],
  ["h[^e]llo", "hello", false],
  ["h[a-c]llo", "hbllo", true],
  ["h[a-c]llo", "hdllo", false],
  ["h[c-a]llo", "hbllo", true], // reversed range
  ["[\\]]", "]", true],
  ["[\\-]", "-", true],
  ["[a\\-z]", "b", false],
  ["[a-]", "-", false], // `a-]` is the range `]`..`a`, and the set is left unclosed
  ["[a-]", "_", true],
  ["[]", "a", false],
  ["[ab", "a", true], // unclosed set ends the pattern
  ["[ab", "ab", false],
  ["x[", "x", false],
  ["\\*", "*", true],
  ["\\*", "a", false],
  ["\\?", "?", true],
  ["\\?", "x", false],
  ["\\[x]", "[x]", true],
  ["a\\", "a\\", true], // trailing backslash is literal
  ["\\\\", "\\", true],
  ["\\a", "a", true],
  ["*\\*", "abc*", true],
  ["*\\*", "abc", false],
  ["a*", "a*", true],
  ["*a*a*a*a*a*a*a*a*b", "a".repeat(60), false],
];

test("matches as Redis does", () => {
  for (const [pattern, key, expected] of CASES) {
    assert.equal(globMatch(pattern, key), expected, `${JSON.stringify(pattern)} vs ${JSON.stringify(key)}`);
  }
});

test("a pathological pattern is cut short, not exponential", () => {
  const started = Date.now();
  assert.equal(globMatch("*a".repeat(30) + "b", "a".repeat(2000)), false);
  assert.ok(Date.now() - started < 2000);
});

test("escaped row values match only themselves", () => {
  // walbust renders `search:{name}:*` with name = `a*b?[x]\` as
  // `search:a\*b\?\[x\]\\:*`: the value cannot widen the pattern.
  const name = "a*b?[x]\\";
  const pattern = `search:${globEscape(name)}:*`;
  assert.equal(pattern, "search:a\\*b\\?\\[x\\]\\\\:*");
  const glob = new Glob(pattern);
  assert.ok(glob.matches(`search:${name}:page:1`));
  assert.ok(glob.matches(`search:${name}:`));
  assert.ok(!glob.matches("search:aXbY[x]\\:page:1"));
  assert.ok(!glob.matches("search:a*b?x\\:page:1"));
  assert.ok(!glob.matches("search:anything:page:1"));
  for (const value of ["*", "?", "[", "]", "\\", "[a-z]", "^", "-", "plain", "é*"]) {
    const g = new Glob(globEscape(value));
    assert.ok(g.matches(value), value);
    assert.ok(!g.matches(value + "x"), value);
    if (value !== "plain") assert.ok(!g.matches("a"), value);
  }
});

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

test("agrees with a real redis-server on random patterns", async (t) => {
  const Redis = (await import("ioredis")).default;
  const port = await freePort();
  const server = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: "ignore" },
  );
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.once("error", (e) => {
    throw new Error(`redis-server could not start (install redis-server): ${e.message}`);
  });
  t.after(async () => {
    server.kill();
    await exited;
  });
  const redis = new Redis({ port, host: "127.0.0.1", retryStrategy: (n) => (n > 50 ? null : 100) });
  redis.on("error", () => {}); // refused until the server listens; retried
  t.after(() => redis.disconnect());
  await redis.ping();

  // A deterministic generator, so a failure replays.
  let seed = 12345;
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const keyChars = ["a", "b", "c", "-", "^", "]", "[", "\\", "*", "?", "é"];
  const patChars = [...keyChars, "*", "?", "[", "]", "\\", "-", "^"];
  const word = (chars, max) => Array.from({ length: rand(max + 1) }, () => chars[rand(chars.length)]).join("");
  const keys = [...new Set(Array.from({ length: 400 }, () => word(keyChars, 5)).filter((k) => k !== ""))];
  await redis.mset(...keys.flatMap((k) => [k, "1"]));
  let compared = 0;
  for (let i = 0; i < 600; i++) {
    const pattern = word(patChars, 6);
    const fromRedis = new Set(await redis.keys(pattern));
    const glob = new Glob(pattern);
    for (const key of keys) {
      assert.equal(glob.matches(key), fromRedis.has(key), `pattern ${JSON.stringify(pattern)} key ${JSON.stringify(key)}`);
      compared++;
    }
  }
  assert.ok(compared > 100000);
});

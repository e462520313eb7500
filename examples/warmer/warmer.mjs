// A cache warmer for walbust's refresh stream.
//
// Rules with `refresh: true` make walbust append the keys it just
// invalidated to a capped Redis Stream (sinks.redis.refresh_stream), one
// entry per batch (`lsn`, `keys` as a JSON array), after the invalidation.
// This program reads that stream in a consumer group (several warmers share
// the work; an entry a crashed warmer did not acknowledge is read again),
// recomputes each key it knows from Postgres, and stores it with a fenced
// fill (FCALL walbust_get / walbust_fill, sinks.redis.leases: true), so a
// value read before a newer commit can never overwrite that commit's
// invalidation.
//
// Which keys it knows, and how to compute them, comes from a loaders module
// (WARMER_LOADERS): `export const loaders = [{ pattern, sql }]`, where
// `pattern` is a RegExp over the whole key and `sql` a query taking the
// pattern's groups as $1, $2, ... and returning one text column, the value
// to cache (no row: nothing to cache). See ../restaurant/warm.mjs.
//
// Settings (environment):
//   REDIS_URL        redis://127.0.0.1:6379
//   DATABASE_URL     postgres://... (a role that may read the tables)
//   WARMER_LOADERS   path of the loaders module (required)
//   REFRESH_STREAM   walbust:refresh (sinks.redis.refresh_stream)
//   WARMER_GROUP     warmers
//   WARMER_CONSUMER  warmer-<pid>
//   WARMER_TTL_MS    600000 (expiry of a filled value; 0: none)
//   WARMER_LEASES    1 (0: plain SET, for a Redis without walbust's
//                    functions; a fill may then race a newer invalidation)
//
// Keys and values are never printed: they can hold personal data.

import path from "node:path";
import { pathToFileURL } from "node:url";

import Redis from "ioredis";
import pg from "pg";

const env = (name, fallback) => process.env[name] ?? fallback;

const stream = env("REFRESH_STREAM", "walbust:refresh");
const group = env("WARMER_GROUP", "warmers");
const consumer = env("WARMER_CONSUMER", `warmer-${process.pid}`);
const ttlMs = Number(env("WARMER_TTL_MS", "600000"));
const leases = env("WARMER_LEASES", "1") !== "0";
const loadersPath = env("WARMER_LOADERS");
if (!loadersPath) {
  console.error("warmer: set WARMER_LOADERS to the module that says how to compute keys");
  process.exit(2);
}
const { loaders } = await import(pathToFileURL(path.resolve(loadersPath)).href);

const redis = new Redis(env("REDIS_URL", "redis://127.0.0.1:6379"));
const db = new pg.Client({ connectionString: env("DATABASE_URL") });
await db.connect();

// The group reads the stream from its start ("0"): entries written before
// the first warmer ever ran are warmed too. BUSYGROUP: it exists already.
try {
  await redis.xgroup("CREATE", stream, group, "0", "MKSTREAM");
} catch (e) {
  if (!String(e.message).includes("BUSYGROUP")) throw e;
}

/** The value of `key` from Postgres, or null when it has none. */
async function load(key) {
  for (const { pattern, sql } of loaders) {
    const m = pattern.exec(key);
    if (!m) continue;
    const { rows } = await db.query({ text: sql, values: m.slice(1), rowMode: "array" });
    return rows.length === 0 || rows[0][0] === null ? null : String(rows[0][0]);
  }
  return undefined; // not a key this warmer knows
}

/** Recomputes and stores one key; returns whether it filled it. */
async function warm(key) {
  if (!leases) {
    const value = await load(key);
    if (value == null) return false;
    await redis.set(key, value, ...(ttlMs > 0 ? ["PX", ttlMs] : []));
    return true;
  }
  // [1, value]: someone cached it already; [2, ""]: someone is filling it;
  // [0, token]: a miss, and the lease is ours.
  const [status, token] = await redis.call("FCALL", "walbust_get", 1, key);
  if (Number(status) !== 0) return false;
  const value = await load(key);
  // Nothing to cache: the lease expires by itself (lease_ttl_ms).
  if (value == null) return false;
  // 0: invalidated again since the lease was taken; the next stream entry
  // brings the key back.
  return Number(await redis.call("FCALL", "walbust_fill", 1, key, token, value, ttlMs)) === 1;
}

let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    stopping = true;
  });
}

// First what this consumer was given and did not acknowledge (a restart
// after a crash), then new entries (">").
let cursor = "0";
while (!stopping) {
  const reply = await redis.xreadgroup(
    "GROUP", group, consumer, "COUNT", 16, "BLOCK", 1000, "STREAMS", stream, cursor,
  );
  const entries = reply?.[0]?.[1] ?? [];
  if (cursor === "0" && entries.length === 0) {
    cursor = ">";
    continue;
  }
  for (const [id, fields] of entries) {
    const at = fields.indexOf("keys");
    const keys = at >= 0 ? JSON.parse(fields[at + 1]) : [];
    let filled = 0;
    for (const key of keys) {
      if (await warm(key)) filled += 1;
    }
    await redis.xack(stream, group, id);
    console.log(`warmer: entry ${id}: ${keys.length} keys, ${filled} filled`);
  }
}
await db.end();
redis.disconnect();

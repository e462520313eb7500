// `node redis.mjs basic|gap`: a local cache kept in step through walbust's
// Redis publish channel (WALBUST_REDIS_URL, WALBUST_CHANNEL).
//
// basic: ready -> (Rust updates product 1) -> its entries go, the rest stay.
// gap:   as basic, then `restart-redis` -> (Rust restarts redis-server) ->
//        the cache is cleared and the gap counted -> refilled, `ready` ->
//        (Rust updates product 1 again) -> its entries go again.
import { TaggedCache, RedisSubscriber, fill, say, until, expectProduct1Invalidated, run, env } from "./common.mjs";

run(async () => {
  const mode = process.argv[2] ?? "basic";
  const cache = new TaggedCache();
  const sub = new RedisSubscriber({ url: env("WALBUST_REDIS_URL"), channel: env("WALBUST_CHANNEL"), cache });
  const gaps = [];
  sub.on("gap", (reason) => gaps.push(reason));
  fill(cache);
  await sub.start();
  say("ready");
  await expectProduct1Invalidated(cache, "first update");
  const lsn = sub.watermark.currentText;
  if (mode === "gap") {
    fill(cache);
    say("restart-redis");
    await until("the reconnect gap", () => gaps.length > 0);
    if (cache.size !== 0) throw new Error(`the cache kept ${cache.size} entries across the gap`);
    if (!sub.connected) throw new Error("the gap was declared before the channel was subscribed again");
    fill(cache);
    say("ready");
    await expectProduct1Invalidated(cache, "update after the reconnect");
  }
  const result = { stats: { ...sub.stats }, gaps, first_lsn: lsn, lsn: sub.watermark.currentText, size: cache.size };
  await sub.stop();
  return result;
});

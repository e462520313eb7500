// `node kafka.mjs basic|restart`: a local cache kept in step through
// walbust's Kafka topic (WALBUST_KAFKA_BOOTSTRAP, WALBUST_TOPIC).
//
// basic:   ready -> (Rust updates product 1) -> its entries go, the rest stay.
// restart: as basic, then the consumer stops (`stopped`); Rust updates
//          product 2 and sends `continue` once walbust delivered it; a second
//          consumer in the same group, over the same cache, resumes after
//          what the first applied and removes product 2.
// reset:   as restart, but the group's offsets are moved to the end of the
//          topic (skipping product 2's record) before the same subscriber
//          starts again (`ready`); when Rust updates product 1, the batch
//          starts past what was applied: the cache is cleared (product 2's
//          stale entry with it) and the gap counted.
import { TaggedCache, KafkaSubscriber, fill, say, hear, until, expectProduct1Invalidated, run, env } from "./common.mjs";

/**
 * Moves the group's committed offsets to the end of the topic, as an
 * operator's reset would. (kafkajs's admin.resetOffsets needs DescribeGroups,
 * which the mock cluster lacks: a member of the group commits them instead.)
 */
async function commitEndOffsets(sub) {
  const admin = sub.kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(sub.topic);
  await admin.disconnect();
  const helper = sub.kafka.consumer({ groupId: sub.groupId, sessionTimeout: 6000, heartbeatInterval: 1000 });
  const joined = new Promise((resolve) => helper.on(helper.events.GROUP_JOIN, resolve));
  await helper.connect();
  await helper.subscribe({ topics: [sub.topic] });
  await helper.run({ autoCommit: false, eachBatchAutoResolve: false, eachBatch: async () => {} });
  await joined;
  await helper.commitOffsets(ends.map(({ partition, high }) => ({ topic: sub.topic, partition, offset: high })));
  await helper.disconnect();
}

/** Says `stopped` and waits for the Rust side's `continue` (it updates product 2 meanwhile). */
async function stoppedUntilContinue(cache) {
  if (!cache.has("product:2")) throw new Error("product 2 went before it was updated");
  say("stopped");
  const answer = await hear();
  if (answer !== "continue") throw new Error(`unexpected line ${JSON.stringify(answer)}`);
}

run(async () => {
  const mode = process.argv[2] ?? "basic";
  const options = (cache) => ({
    brokers: env("WALBUST_KAFKA_BOOTSTRAP").split(","),
    topic: env("WALBUST_TOPIC"),
    groupId: `node-e2e-${mode}`,
    cache,
    // librdkafka's mock cluster answers LeaveGroup v3 in a shape kafkajs
    // cannot read, so a stopped member is only dropped at its session
    // timeout: keep it at the broker's minimum so the second consumer
    // joins quickly.
    consumer: { sessionTimeout: 6000, heartbeatInterval: 1000 },
  });
  const cache = new TaggedCache();
  const first = new KafkaSubscriber(options(cache));
  fill(cache);
  await first.start();
  say("ready");
  await expectProduct1Invalidated(cache, "first update");
  let result = { first: { stats: { ...first.stats }, lsn: first.watermark.currentText } };
  await first.stop();
  if (mode === "reset") {
    await stoppedUntilContinue(cache);
    await commitEndOffsets(first);
    const gaps = [];
    first.on("gap", (reason) => gaps.push(reason));
    await first.start();
    say("ready");
    await until("the offset reset to be noticed", () => gaps.length > 0);
    if (cache.size !== 0) throw new Error(`the cache kept ${[...cache.keys()]} across the reset`);
    result = { ...result, gaps, after: { stats: { ...first.stats } } };
    await first.stop();
  }
  if (mode === "restart") {
    await stoppedUntilContinue(cache);
    const second = new KafkaSubscriber(options(cache));
    const lsns = [];
    second.on("applied", (record) => lsns.push(record.lsnValue));
    await second.start();
    await until("product 2 to be invalidated by the second consumer", () => !cache.has("product:2"));
    if (second.stats.gaps !== 0) throw new Error("the second consumer saw a gap");
    // Offsets were committed after apply: nothing the first consumer applied comes again.
    const replayed = lsns.filter((lsn) => lsn <= first.watermark.current);
    if (replayed.length > 0) throw new Error(`the second consumer got records the first had applied: ${replayed}`);
    result.second = { stats: { ...second.stats }, lsn: second.watermark.currentText };
    await second.stop();
  }
  return result;
});

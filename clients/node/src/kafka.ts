/**
 * Records from walbust's Kafka topic, through a kafkajs consumer group.
 *
 * At-least-once: offsets are committed only after the records before them
 * were applied to the cache, so a consumer that stops or crashes resumes
 * (in the same group) at the first record it had not applied. Records
 * applied but not yet committed come again; applying twice is harmless.
 *
 * Every process holding a local cache needs every record, so each process
 * uses a consumer group of its own (a stable id per instance, not one id
 * shared by the replicas of a service).
 *
 * An offset reset (the committed offset expired with the topic's retention,
 * or the group's offsets were moved forward) skips records: when a batch
 * starts past the offset this subscriber expected, the cache is cleared and
 * the gap counted. The expectation comes from the group's committed offsets
 * at `start()`, and from what the subscriber applied: one that is stopped
 * and started again also notices offsets moved while it was stopped.
 */

import { Kafka, logLevel } from "kafkajs";
import type { Consumer, ConsumerConfig, EachBatchPayload, KafkaConfig } from "kafkajs";

import { Subscriber } from "./subscriber";
import type { SubscriberOptions } from "./subscriber";

export interface KafkaSubscriberOptions extends SubscriberOptions {
  /** Bootstrap brokers, `host:port`; or give `kafka`. */
  brokers?: string[];
  /** A configured kafkajs client (TLS, SASL, logging); `brokers` is then ignored. */
  kafka?: Kafka;
  /** The topic walbust writes to (`sinks.kafka.topic`). */
  topic: string;
  /** This process's consumer group: one per process holding a cache. */
  groupId: string;
  /** Where a group without committed offsets starts: the oldest record, or (default) the next one. */
  fromBeginning?: boolean;
  /** More consumer settings (session timeout, ...). */
  consumer?: Omit<ConsumerConfig, "groupId">;
}

/**
 * Per partition, the offset of the next record this subscriber expects: a
 * batch that starts past it skipped records.
 */
export class OffsetTracker {
  private readonly next = new Map<number, bigint>();

  /**
   * Starts from the group's committed offset (`-1` or empty for none),
   * unless this subscriber already applied records of the partition: then
   * what it applied is what the cache reflects, and a committed offset moved
   * past it while it was stopped is a gap.
   */
  committed(partition: number, offset: string): void {
    const value = offset === "" ? -1n : BigInt(offset);
    if (value >= 0n && !this.next.has(partition)) this.next.set(partition, value);
  }

  /**
   * Whether a batch whose first record is at `offset` skips records this
   * subscriber never applied. Earlier offsets are a replay, not a gap.
   */
  skips(partition: number, offset: string): boolean {
    const expected = this.next.get(partition);
    return expected !== undefined && BigInt(offset) > expected;
  }

  /** Records that the record at `offset` was applied. */
  applied(partition: number, offset: string): void {
    this.next.set(partition, BigInt(offset) + 1n);
  }

  /** The offset expected next, if known. */
  expected(partition: number): bigint | undefined {
    return this.next.get(partition);
  }
}

export class KafkaSubscriber extends Subscriber {
  readonly topic: string;
  readonly groupId: string;
  /** The kafkajs client (for an admin client, say). */
  readonly kafka: Kafka;
  private readonly fromBeginning: boolean;
  private readonly consumerConfig: Omit<ConsumerConfig, "groupId">;
  private readonly offsets = new OffsetTracker();
  private consumer?: Consumer;

  constructor(options: KafkaSubscriberOptions) {
    super(options);
    if (options.kafka === undefined && (options.brokers?.length ?? 0) === 0) {
      throw new TypeError("KafkaSubscriber needs brokers or a kafka client");
    }
    this.kafka =
      options.kafka ??
      new Kafka({
        clientId: "walbust-subscriber",
        brokers: options.brokers ?? [],
        logLevel: logLevel.WARN,
      } satisfies KafkaConfig);
    this.topic = options.topic;
    this.groupId = options.groupId;
    this.fromBeginning = options.fromBeginning ?? false;
    this.consumerConfig = { maxWaitTimeInMs: 1000, ...options.consumer };
  }

  /**
   * Joins the group and starts applying records; resolves once the first
   * fetch returned, so the starting offsets are fixed: anything walbust
   * publishes from then on reaches the cache.
   */
  async start(): Promise<void> {
    if (this.consumer !== undefined) throw new Error("KafkaSubscriber already started");
    await this.readCommittedOffsets();
    const consumer = this.kafka.consumer({ ...this.consumerConfig, groupId: this.groupId });
    this.consumer = consumer;
    const fetched = new Promise<void>((resolve) => {
      const off = consumer.on(consumer.events.FETCH, () => {
        off();
        resolve();
      });
    });
    consumer.on(consumer.events.CRASH, (event) => this.emit("transportError", event.payload.error));
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic], fromBeginning: this.fromBeginning });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: (payload) => this.eachBatch(payload),
    });
    await fetched;
  }

  /** Leaves the group; what was applied is committed. */
  async stop(): Promise<void> {
    const consumer = this.consumer;
    this.consumer = undefined;
    await consumer?.disconnect();
  }

  private async readCommittedOffsets(): Promise<void> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      const topics = await admin.fetchOffsets({ groupId: this.groupId, topics: [this.topic] });
      for (const t of topics) {
        for (const p of t.partitions) this.offsets.committed(p.partition, p.offset);
      }
    } finally {
      await admin.disconnect();
    }
  }

  private async eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    const first = batch.messages[0];
    if (first === undefined) return;
    if (this.offsets.skips(batch.partition, first.offset)) {
      this.gap(
        `kafka offset reset on ${batch.topic}[${batch.partition}]: expected offset ` +
          `${this.offsets.expected(batch.partition)}, got ${first.offset}`,
      );
    }
    let last: string | undefined;
    for (const message of batch.messages) {
      if (!isRunning() || isStale()) break;
      if (message.value !== null) this.handle(message.value);
      resolveOffset(message.offset);
      this.offsets.applied(batch.partition, message.offset);
      last = message.offset;
    }
    if (last !== undefined && this.consumer !== undefined) {
      await this.consumer.commitOffsets([
        { topic: batch.topic, partition: batch.partition, offset: (BigInt(last) + 1n).toString() },
      ]);
    }
    await heartbeat();
  }
}

/**
 * walbust-subscriber: apply walbust's cache invalidations to in-process
 * caches, from Redis PUBLISH or Kafka.
 */

export { parseLsn, formatLsn, toLsn } from "./lsn";
export { Glob, globMatch, globEscape } from "./glob";
export { RECORD_VERSION, FLUSH_ALL, RecordError, parseRecord } from "./record";
export type { InvalidationRecord, ParsedRecord, RefusalKind } from "./record";
export { TaggedCache } from "./cache";
export type { InvalidationTarget, SetOptions, TaggedCacheOptions } from "./cache";
export { Watermark } from "./watermark";
export { Subscriber } from "./subscriber";
export type { SubscriberOptions, SubscriberStats } from "./subscriber";
export { RedisSubscriber } from "./redis";
export type { RedisSubscriberOptions } from "./redis";
export { KafkaSubscriber, OffsetTracker } from "./kafka";
export type { KafkaSubscriberOptions } from "./kafka";

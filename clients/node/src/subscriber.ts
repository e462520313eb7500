/**
 * What every transport shares: parse a payload, refuse what is not a
 * version 1 record, apply the rest to the cache, move the watermark, count.
 *
 * Invalidations are idempotent and order-free (walbust delivers at least
 * once; a record can come twice, a large batch in several parts), so a
 * record is applied as it comes. A transport that may have lost records
 * (Redis PUBLISH across a reconnect, a Kafka offset reset) calls
 * {@link Subscriber.gap}, which clears the cache: an entry whose
 * invalidation was lost would otherwise stay stale forever.
 *
 * Events: `applied` (record, entries removed), `refused` (RecordError,
 * payload), `gap` (reason), `transportError` (error; the transport retries
 * by itself).
 */

import { EventEmitter } from "node:events";

import type { InvalidationTarget } from "./cache";
import { parseRecord, RecordError, FLUSH_ALL } from "./record";
import type { ParsedRecord } from "./record";
import { Watermark } from "./watermark";

export interface SubscriberStats {
  /** Payloads received. */
  records: number;
  /** Records applied to the cache. */
  applied: number;
  /** Records of a schema version other than 1, refused and never applied. */
  refused: number;
  /** Payloads that are not records (not JSON, wrong field types), never applied. */
  malformed: number;
  /** Times the transport may have lost records and the cache was cleared. */
  gaps: number;
  /** Cache entries removed by records. */
  removed: number;
  /** Records that carried the flush-all pattern `*`. */
  flushes: number;
}

export interface SubscriberOptions {
  /** The cache to keep in step, a {@link TaggedCache} or anything implementing the target. */
  cache: InvalidationTarget;
  /** The watermark to advance; a new one if unset. */
  watermark?: Watermark;
}

export class Subscriber extends EventEmitter {
  readonly cache: InvalidationTarget;
  readonly watermark: Watermark;
  readonly stats: SubscriberStats = {
    records: 0,
    applied: 0,
    refused: 0,
    malformed: 0,
    gaps: 0,
    removed: 0,
    flushes: 0,
  };

  constructor(options: SubscriberOptions) {
    super();
    this.cache = options.cache;
    this.watermark = options.watermark ?? new Watermark();
  }

  /**
   * Applies one payload. Returns the record, or `undefined` when it was
   * refused (counted in `stats` and emitted as `refused`).
   */
  handle(payload: string | Uint8Array): ParsedRecord | undefined {
    this.stats.records++;
    let record: ParsedRecord;
    try {
      record = parseRecord(payload);
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      if (e.kind === "version") this.stats.refused++;
      else this.stats.malformed++;
      this.emit("refused", e, payload);
      return undefined;
    }
    let removed = 0;
    if (record.patterns.includes(FLUSH_ALL)) {
      this.stats.flushes++;
      removed += this.cache.invalidatePatterns([FLUSH_ALL]);
    } else {
      removed += this.cache.invalidateKeys(record.keys);
      removed += this.cache.invalidateTags(record.tags);
      removed += this.cache.invalidatePatterns(record.patterns);
    }
    this.stats.applied++;
    this.stats.removed += removed;
    this.watermark.advance(record.lsnValue);
    this.emit("applied", record, removed);
    return record;
  }

  /** Clears the cache because records may have been lost; counted and emitted as `gap`. */
  gap(reason: string): void {
    this.cache.clear();
    this.stats.gaps++;
    this.emit("gap", reason);
  }
}

/**
 * The JSON record walbust publishes for each batch, on Kafka and on the
 * Redis `publish_channel`:
 *
 * ```json
 * {"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z",
 *  "xids":[1234],"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}
 * ```
 *
 * Fields may be added to version 1; they are ignored. A record of another
 * version is refused: its meaning is unknown, so nothing of it is applied.
 * A pattern `*` stands for everything (walbust sends it after a gap).
 *
 * A scheduled invalidation (a rule with `at:`, applied when a row's
 * timestamp came) carries `due_ts`, when it was due; its `lsn` is that of
 * the commit that scheduled it, older than records already applied (the
 * watermark never moves back).
 */

import { parseLsn } from "./lsn";

/** The only schema version this package applies. */
export const RECORD_VERSION = 1;

/** The pattern that invalidates everything. */
export const FLUSH_ALL = "*";

/** A record as walbust writes it (schema version 1). */
export interface InvalidationRecord {
  /** Schema version, always 1 here. */
  v: 1;
  /** Commit LSN of the batch's last transaction, `X/Y`. */
  lsn: string;
  /** That transaction's commit time, RFC 3339, UTC, microseconds. */
  commit_ts: string;
  /** Transactions whose invalidations the record carries. */
  xids: number[];
  /** Cache keys to remove. */
  keys: string[];
  /** Tags whose entries to remove. */
  tags: string[];
  /** Redis glob patterns of keys to remove; `*` is everything. */
  patterns: string[];
  /** Only on scheduled invalidations: when they were due (RFC 3339, UTC). */
  due_ts?: string;
}

/** A parsed record, with its LSN as a number. */
export interface ParsedRecord extends InvalidationRecord {
  lsnValue: bigint;
}

/** Why a payload was not applied. */
export type RefusalKind = "malformed" | "version";

/** A payload that is not a record this package may apply. */
export class RecordError extends Error {
  constructor(
    readonly kind: RefusalKind,
    message: string,
  ) {
    super(message);
    this.name = "RecordError";
  }
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses and checks one payload. Throws a {@link RecordError}: `version`
 * for a record of another schema version (or none), `malformed` for
 * anything that is not a version 1 record.
 */
export function parseRecord(payload: string | Uint8Array): ParsedRecord {
  let text: string;
  try {
    text = typeof payload === "string" ? payload : decoder.decode(payload);
  } catch {
    throw new RecordError("malformed", "the record is not UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new RecordError("malformed", `the record is not JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new RecordError("malformed", "the record is not a JSON object");
  }
  const o = value as Record<string, unknown>;
  if (o.v !== RECORD_VERSION) {
    throw new RecordError(
      "version",
      `record version ${JSON.stringify(o.v ?? null)} refused: this subscriber applies version ${RECORD_VERSION}`,
    );
  }
  if (typeof o.lsn !== "string") {
    throw new RecordError("malformed", "the record has no lsn string");
  }
  let lsnValue: bigint;
  try {
    lsnValue = parseLsn(o.lsn);
  } catch (e) {
    throw new RecordError("malformed", (e as Error).message);
  }
  const commitTs = o.commit_ts ?? "";
  if (typeof commitTs !== "string") {
    throw new RecordError("malformed", "commit_ts is not a string");
  }
  const xids = o.xids ?? [];
  if (!Array.isArray(xids) || !xids.every((x) => Number.isSafeInteger(x) && x >= 0)) {
    throw new RecordError("malformed", "xids is not an array of transaction ids");
  }
  const dueTs = o.due_ts;
  if (dueTs !== undefined && typeof dueTs !== "string") {
    throw new RecordError("malformed", "due_ts is not a string");
  }
  return {
    ...(dueTs === undefined ? {} : { due_ts: dueTs }),
    v: RECORD_VERSION,
    lsn: o.lsn,
    lsnValue,
    commit_ts: commitTs,
    xids: xids as number[],
    keys: strings(o, "keys"),
    tags: strings(o, "tags"),
    patterns: strings(o, "patterns"),
  };
}

function strings(o: Record<string, unknown>, field: string): string[] {
  const list = o[field] ?? [];
  if (!Array.isArray(list) || !list.every((s) => typeof s === "string")) {
    throw new RecordError("malformed", `${field} is not an array of strings`);
  }
  return list as string[];
}

/**
 * Postgres WAL positions. walbust prints them as Postgres does (`X/Y`, two
 * hexadecimal halves of a 64-bit number); they are compared as `bigint`
 * because a JavaScript number loses precision past 2^53.
 */

const LSN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses `X/Y`; throws a `RangeError` on anything else. */
export function parseLsn(text: string): bigint {
  const m = LSN.exec(text);
  if (m === null) {
    throw new RangeError(`not a WAL position (X/Y in hexadecimal): ${JSON.stringify(text)}`);
  }
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Formats a position as Postgres does: `16/B374D848`. */
export function formatLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > 0xffffffffffffffffn) {
    throw new RangeError(`a WAL position is a 64-bit unsigned number: ${lsn}`);
  }
  const hi = (lsn >> 32n).toString(16).toUpperCase();
  const lo = (lsn & 0xffffffffn).toString(16).toUpperCase();
  return `${hi}/${lo}`;
}

/** A position given either way, as a `bigint`. */
export function toLsn(lsn: bigint | string): bigint {
  return typeof lsn === "bigint" ? lsn : parseLsn(lsn);
}

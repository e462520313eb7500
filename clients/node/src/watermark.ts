/**
 * The highest record LSN applied to a cache, for read-your-writes: after a
 * write, a service reads the server's position (`SELECT
 * pg_current_wal_lsn()` after `COMMIT`), and reads through the cache only
 * once {@link Watermark.waitFor} says the cache has applied every
 * invalidation up to it.
 *
 * Records carry their transaction's commit LSN, which is before any
 * position read after the commit: such a wait ends once a later commit's
 * record was applied too, which walbust delivers after the write's own
 * records. It never ends early, including for a batch split across several
 * records of the same LSN (waiting for that exact LSN would end after the
 * first part).
 */

import { formatLsn, toLsn } from "./lsn";

interface Waiter {
  lsn: bigint;
  resolve: (passed: boolean) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class Watermark {
  private lsn: bigint | undefined;
  private waiters: Waiter[] = [];

  /** The highest applied position, `undefined` before the first record. */
  get current(): bigint | undefined {
    return this.lsn;
  }

  /** {@link current} as `X/Y`. */
  get currentText(): string | undefined {
    return this.lsn === undefined ? undefined : formatLsn(this.lsn);
  }

  /** Whether a record at or past `lsn` was applied. */
  passed(lsn: bigint | string): boolean {
    const target = toLsn(lsn);
    return this.lsn !== undefined && this.lsn >= target;
  }

  /**
   * Records that everything up to `lsn` was applied. Never moves back: a
   * record delivered again is older than the watermark. Returns whether it
   * moved.
   */
  advance(lsn: bigint | string): boolean {
    const next = toLsn(lsn);
    if (this.lsn !== undefined && next <= this.lsn) return false;
    this.lsn = next;
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.lsn <= next) {
        clearTimeout(w.timer);
        w.resolve(true);
      } else {
        still.push(w);
      }
    }
    this.waiters = still;
    return true;
  }

  /**
   * Resolves `true` once a record at or past `lsn` is applied (at once if
   * one already is), `false` after `timeoutMs` without.
   */
  waitFor(lsn: bigint | string, timeoutMs: number): Promise<boolean> {
    const target = toLsn(lsn);
    if (this.passed(target)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        lsn: target,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(false);
        }, Math.max(0, timeoutMs)),
      };
      this.waiters.push(waiter);
    });
  }

  /** Number of pending {@link waitFor} calls. */
  get waiting(): number {
    return this.waiters.length;
  }
}

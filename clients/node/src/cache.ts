/**
 * A `Map`-like in-process cache that walbust's invalidations can reach:
 * every entry may carry tags, and the cache removes entries by key, by tag
 * and by Redis glob pattern.
 *
 * The tag index (tag -> keys) is kept consistent with the entries on every
 * path that removes or replaces one: `delete`, `clear`, an overwrite by
 * `set` (the old tags are dropped), and eviction. With `maxSize`, the least
 * recently used entry is evicted first (`get` and `set` count as use;
 * `has`, `peek` and iteration do not). Iteration runs from the least to the
 * most recently used entry.
 */

import { Glob } from "./glob";
import { FLUSH_ALL } from "./record";

/** What a subscriber needs of a cache: anything implementing it can be kept in step. */
export interface InvalidationTarget {
  /** Removes these keys; returns how many entries went. */
  invalidateKeys(keys: Iterable<string>): number;
  /** Removes every entry of these tags; returns how many entries went. */
  invalidateTags(tags: Iterable<string>): number;
  /** Removes every key matching one of these Redis globs (`*` clears); returns how many went. */
  invalidatePatterns(patterns: Iterable<string>): number;
  /** Removes everything. */
  clear(): void;
}

export interface SetOptions {
  /** Tags of the entry; a tag invalidation removes every entry that has it. */
  tags?: Iterable<string>;
}

export interface TaggedCacheOptions<V> {
  /** Most entries kept; past it the least recently used one is evicted. Unbounded if unset. */
  maxSize?: number;
  /** Called for each entry evicted to respect `maxSize` (not for deletes or invalidations). */
  onEvict?: (key: string, value: V) => void;
}

interface Entry<V> {
  value: V;
  tags: readonly string[];
}

export class TaggedCache<V = unknown> implements InvalidationTarget, Iterable<[string, V]> {
  private readonly entriesByKey = new Map<string, Entry<V>>();
  private readonly keysByTag = new Map<string, Set<string>>();
  private readonly maxSize: number;
  private readonly onEvict?: (key: string, value: V) => void;
  private evictedCount = 0;

  constructor(options: TaggedCacheOptions<V> = {}) {
    const max = options.maxSize ?? Infinity;
    if (!(max >= 1)) {
      throw new RangeError(`maxSize must be at least 1, got ${options.maxSize}`);
    }
    this.maxSize = max;
    this.onEvict = options.onEvict;
  }

  get size(): number {
    return this.entriesByKey.size;
  }

  /** Entries evicted so far to respect `maxSize`. */
  get evictions(): number {
    return this.evictedCount;
  }

  /** The value of `key`, marking it as recently used. */
  get(key: string): V | undefined {
    const entry = this.entriesByKey.get(key);
    if (entry === undefined) return undefined;
    // Map keeps insertion order: re-inserting moves the key to the young end.
    this.entriesByKey.delete(key);
    this.entriesByKey.set(key, entry);
    return entry.value;
  }

  /** The value of `key`, without marking it as used. */
  peek(key: string): V | undefined {
    return this.entriesByKey.get(key)?.value;
  }

  has(key: string): boolean {
    return this.entriesByKey.has(key);
  }

  /** Stores `value` under `key` with `options.tags` (replacing the tags of an older entry). */
  set(key: string, value: V, options: SetOptions = {}): this {
    this.remove(key);
    const tags = [...new Set(options.tags ?? [])];
    this.entriesByKey.set(key, { value, tags });
    for (const tag of tags) {
      let keys = this.keysByTag.get(tag);
      if (keys === undefined) {
        keys = new Set();
        this.keysByTag.set(tag, keys);
      }
      keys.add(key);
    }
    while (this.entriesByKey.size > this.maxSize) {
      const [oldest, entry] = this.entriesByKey.entries().next().value as [string, Entry<V>];
      this.remove(oldest);
      this.evictedCount++;
      this.onEvict?.(oldest, entry.value);
    }
    return this;
  }

  delete(key: string): boolean {
    return this.remove(key);
  }

  clear(): void {
    this.entriesByKey.clear();
    this.keysByTag.clear();
  }

  /** The tags `key` was stored with, `undefined` if absent. */
  tagsOf(key: string): readonly string[] | undefined {
    return this.entriesByKey.get(key)?.tags;
  }

  /** The keys currently stored with `tag`. */
  keysOfTag(tag: string): string[] {
    return [...(this.keysByTag.get(tag) ?? [])];
  }

  /** Tags that have at least one entry. */
  get tagCount(): number {
    return this.keysByTag.size;
  }

  invalidateKeys(keys: Iterable<string>): number {
    let removed = 0;
    for (const key of keys) if (this.remove(key)) removed++;
    return removed;
  }

  invalidateTags(tags: Iterable<string>): number {
    let removed = 0;
    for (const tag of tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      for (const key of [...keys]) if (this.remove(key)) removed++;
    }
    return removed;
  }

  invalidatePatterns(patterns: Iterable<string>): number {
    const globs: Glob[] = [];
    for (const pattern of patterns) {
      if (pattern === FLUSH_ALL) {
        const removed = this.size;
        this.clear();
        return removed;
      }
      globs.push(new Glob(pattern));
    }
    if (globs.length === 0) return 0;
    let removed = 0;
    for (const key of [...this.entriesByKey.keys()]) {
      if (globs.some((g) => g.matches(key)) && this.remove(key)) removed++;
    }
    return removed;
  }

  keys(): IterableIterator<string> {
    return this.entriesByKey.keys();
  }

  *values(): IterableIterator<V> {
    for (const entry of this.entriesByKey.values()) yield entry.value;
  }

  *entries(): IterableIterator<[string, V]> {
    for (const [key, entry] of this.entriesByKey) yield [key, entry.value];
  }

  [Symbol.iterator](): IterableIterator<[string, V]> {
    return this.entries();
  }

  forEach(callback: (value: V, key: string, cache: this) => void): void {
    for (const [key, entry] of this.entriesByKey) callback(entry.value, key, this);
  }

  get [Symbol.toStringTag](): string {
    return "TaggedCache";
  }

  private remove(key: string): boolean {
    const entry = this.entriesByKey.get(key);
    if (entry === undefined) return false;
    this.entriesByKey.delete(key);
    for (const tag of entry.tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) this.keysByTag.delete(tag);
    }
    return true;
  }
}

/**
 * Redis glob patterns, matched exactly as Redis matches `SCAN MATCH` and
 * `KEYS` (a port of `stringmatchlen` in Redis's util.c), so that a pattern
 * removes from a local cache the keys it would remove from Redis:
 *
 * - `*` any run of bytes, `?` one byte;
 * - `[abc]`, `[a-z]` (a reversed range `[z-a]` is the same range),
 *   `[^...]` negated, `\x` inside a set is `x`;
 * - `\x` outside a set is a literal `x`;
 * - an unclosed `[` ends the pattern (`[ab` is `[ab]`), a trailing `\` is a
 *   literal backslash.
 *
 * Matching works on UTF-8 bytes, like Redis: `?` matches one byte of `é`,
 * not the whole character.
 *
 * walbust escapes row values placed into pattern templates with a backslash
 * before each of `* ? [ ] \` ({@link globEscape}), so a value can never
 * widen a pattern.
 */

const STAR = 0x2a;
const QUESTION = 0x3f;
const OPEN = 0x5b;
const CLOSE = 0x5d;
const BACKSLASH = 0x5c;
const CARET = 0x5e;
const DASH = 0x2d;

/** Bounds the recursion of `*`, as Redis does, against abusive patterns. */
const MAX_NESTING = 1000;

const encoder = new TextEncoder();

/** A compiled pattern, to match many keys against one pattern. */
export class Glob {
  private readonly bytes: Uint8Array;

  constructor(readonly pattern: string) {
    this.bytes = encoder.encode(pattern);
  }

  /** Whether `key` matches, as Redis would decide. */
  matches(key: string): boolean {
    const skip = { longer: false };
    return match(this.bytes, 0, encoder.encode(key), 0, skip, 0);
  }
}

/** Whether `key` matches the Redis glob `pattern`. */
export function globMatch(pattern: string, key: string): boolean {
  return new Glob(pattern).matches(key);
}

/**
 * `value` with every glob metacharacter (`* ? [ ] \`) escaped by a
 * backslash, as walbust escapes row values in pattern templates: the
 * result matches only `value` itself.
 */
export function globEscape(value: string): string {
  return value.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/** The byte at `i`, or -1 past the end (C reads the terminating NUL there). */
function at(b: Uint8Array, i: number): number {
  return i < b.length ? b[i] : -1;
}

function match(
  p: Uint8Array,
  pi: number,
  s: Uint8Array,
  si: number,
  skip: { longer: boolean },
  nesting: number,
): boolean {
  if (nesting > MAX_NESTING) return false;
  while (pi < p.length && si < s.length) {
    switch (p[pi]) {
      case STAR: {
        while (pi + 1 < p.length && p[pi + 1] === STAR) pi++;
        if (pi + 1 === p.length) return true;
        while (si < s.length) {
          if (match(p, pi + 1, s, si, skip, nesting + 1)) return true;
          if (skip.longer) return false;
          si++;
        }
        // The rest of the pattern matches nowhere in the rest of the key:
        // no longer match of an earlier `*` can help either.
        skip.longer = true;
        return false;
      }
      case QUESTION:
        si++;
        break;
      case OPEN: {
        pi++;
        const not = at(p, pi) === CARET;
        if (not) pi++;
        let matched = false;
        const c = s[si];
        for (;;) {
          if (at(p, pi) === BACKSLASH && p.length - pi >= 2) {
            pi++;
            if (p[pi] === c) matched = true;
          } else if (at(p, pi) === CLOSE) {
            break;
          } else if (pi >= p.length) {
            // Unclosed set: step back so the increment below ends the pattern.
            pi--;
            break;
          } else if (p.length - pi >= 3 && p[pi + 1] === DASH) {
            let start = p[pi];
            let end = p[pi + 2];
            if (start > end) [start, end] = [end, start];
            pi += 2;
            if (c >= start && c <= end) matched = true;
          } else if (p[pi] === c) {
            matched = true;
          }
          pi++;
        }
        if (not) matched = !matched;
        if (!matched) return false;
        si++;
        break;
      }
      case BACKSLASH:
        if (p.length - pi >= 2) pi++;
        if (p[pi] !== s[si]) return false;
        si++;
        break;
      default:
        if (p[pi] !== s[si]) return false;
        si++;
        break;
    }
    pi++;
    if (si === s.length) {
      while (at(p, pi) === STAR) pi++;
      break;
    }
  }
  return pi >= p.length && si === s.length;
}

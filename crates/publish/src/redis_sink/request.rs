//! Redis commands for a batch, built without I/O.
//!
//! [`key_chunks`] is the one place that decides which keys share a command. Against a single
//! Redis it cuts by size; Redis Cluster support groups by [`hash_slot`] first (a multi-key
//! command must stay within one slot), without touching the rest of the sink.

use redis::{Cmd, Pipeline, Script};

/// Purges tags of the `set` strategy. For each `KEYS[i]` (a tag's set): unlink every member and
/// the set itself. Returns how many member keys existed and were removed.
///
/// The script runs atomically, so an application's concurrent `SADD` of a freshly cached key
/// lands either before it (the key is purged) or after it (the key sits in a new set and is
/// purged by the next invalidation): a registration is never lost between `SMEMBERS` and the
/// delete. Members are unlinked in slices, because Lua's `unpack` has a stack limit.
pub const TAG_SET_PURGE_SCRIPT: &str = r"
local removed = 0
for _, set in ipairs(KEYS) do
  local members = redis.call('SMEMBERS', set)
  local n = #members
  for i = 1, n, 1000 do
    removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 999, n)))
  end
  redis.call('UNLINK', set)
end
return removed
";

/// The tag-purge script as a [`Script`] (it knows its SHA1 and reloads itself on `NOSCRIPT`).
pub fn tag_set_purge_script() -> Script {
    Script::new(TAG_SET_PURGE_SCRIPT)
}

/// The Redis key of a tag: `<prefix><tag>`.
pub fn tag_key(prefix: &str, tag: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + tag.len());
    key.push_str(prefix);
    key.push_str(tag);
    key
}

/// Splits keys into the groups that share one command.
pub fn key_chunks<S: AsRef<str>>(keys: &[S], chunk: usize) -> impl Iterator<Item = &[S]> {
    keys.chunks(chunk.max(1))
}

/// One pipeline of `UNLINK`s, `chunk` keys each; its reply is one count per command.
pub fn unlink_pipeline<S: AsRef<str>>(keys: &[S], chunk: usize) -> Pipeline {
    let mut pipe = redis::pipe();
    for group in key_chunks(keys, chunk) {
        pipe.add_command(unlink(group));
    }
    pipe
}

/// `UNLINK key...`.
pub fn unlink<S: AsRef<str>>(keys: &[S]) -> Cmd {
    let mut cmd = redis::cmd("UNLINK");
    for key in keys {
        cmd.arg(key.as_ref());
    }
    cmd
}

/// One pipeline of `INCR <prefix><tag>` (the `version` strategy).
pub fn incr_pipeline(prefix: &str, tags: &[String]) -> Pipeline {
    let mut pipe = redis::pipe();
    for tag in tags {
        pipe.cmd("INCR").arg(tag_key(prefix, tag)).ignore();
    }
    pipe
}

/// `SCAN <cursor> MATCH <pattern> COUNT <count>`.
pub fn scan(cursor: u64, pattern: &str, count: usize) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count);
    cmd
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the part
/// between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => "<cursor>".to_string(),
            })
            .collect()
    }

    #[test]
    fn unlinks_are_chunked() {
        let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let pipe = unlink_pipeline(&keys, 3);
        let cmds: Vec<Vec<String>> = pipe.cmd_iter().map(args).collect();
        assert_eq!(
            cmds,
            [
                vec!["UNLINK", "k0", "k1", "k2"],
                vec!["UNLINK", "k3", "k4", "k5"],
                vec!["UNLINK", "k6"],
            ]
        );
    }

    #[test]
    fn tags_are_prefixed() {
        let pipe = incr_pipeline("tagver:", &["category:3".to_string()]);
        let cmds: Vec<Vec<String>> = pipe.cmd_iter().map(args).collect();
        assert_eq!(cmds, [vec!["INCR", "tagver:category:3"]]);
    }

    #[test]
    fn scan_command() {
        assert_eq!(
            args(&scan(17, "product-list:\\*", 1000)),
            ["SCAN", "17", "MATCH", "product-list:\\*", "COUNT", "1000"]
        );
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(
            hash_slot(b"foo{}{bar}"),
            hash_slot(b"bar"),
            "empty tag: whole key"
        );
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
    }
}

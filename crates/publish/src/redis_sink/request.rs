//! Redis commands for a batch, built without I/O.
//!
//! [`key_chunks`] and [`slot_chunks`] decide which keys share a command. Against a single
//! Redis keys are cut by size; against a Redis Cluster they are grouped by [`hash_slot`] first
//! (a multi-key command, a pipeline or a script must stay within one slot), then cut by size.
//! [`cluster_primaries`] reads the primaries out of `CLUSTER SLOTS`, for pattern scans.

use std::collections::BTreeMap;

use redis::{Cmd, Pipeline, Script, Value};

/// Purges tags of the `set` strategy. For each `KEYS[i]` (a tag's set): unlink every member and
/// the set itself. Returns `{members removed, wrong-typed tag keys removed}`.
///
/// The script runs atomically, so an application's concurrent `SADD` of a freshly cached key
/// lands either before it (the key is purged) or after it (the key sits in a new set and is
/// purged by the next invalidation): a registration is never lost between `SMEMBERS` and the
/// delete. Members are unlinked in slices, because Lua's `unpack` has a stack limit.
///
/// A tag key that holds something other than a set (an application wrote a string under the tag
/// prefix) cannot name any cached key, so it is unlinked and counted instead of failing with
/// `WRONGTYPE`: an error would fail the whole batch on every retry and stop all invalidation.
pub const TAG_SET_PURGE_SCRIPT: &str = r"
local removed, wrong_type = 0, 0
for _, set in ipairs(KEYS) do
  local kind = redis.call('TYPE', set)['ok']
  if kind == 'set' then
    local members = redis.call('SMEMBERS', set)
    local n = #members
    for i = 1, n, 1000 do
      removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 999, n)))
    end
    redis.call('UNLINK', set)
  elseif kind ~= 'none' then
    wrong_type = wrong_type + redis.call('UNLINK', set)
  end
end
return {removed, wrong_type}
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

/// Groups keys by Redis Cluster hash slot, in slot order, and cuts each slot's keys into chunks
/// of at most `chunk`: every chunk can share one multi-key command, pipeline or script.
pub fn slot_chunks<S: AsRef<str>>(keys: &[S], chunk: usize) -> Vec<Vec<&S>> {
    let mut by_slot: BTreeMap<u16, Vec<&S>> = BTreeMap::new();
    for key in keys {
        by_slot
            .entry(hash_slot(key.as_ref().as_bytes()))
            .or_default()
            .push(key);
    }
    let chunk = chunk.max(1);
    by_slot
        .into_values()
        .flat_map(|group| group.chunks(chunk).map(<[&S]>::to_vec).collect::<Vec<_>>())
        .collect()
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

/// `INCR key` (a tag's version counter, already prefixed).
pub fn incr<S: AsRef<str>>(key: S) -> Cmd {
    let mut cmd = redis::cmd("INCR");
    cmd.arg(key.as_ref());
    cmd
}

/// One pipeline of `INCR <key>` for each key, replies ignored (the `version` strategies).
pub fn incr_pipeline<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.add_command(incr(key)).ignore();
    }
    pipe
}

/// `SCAN <cursor> MATCH <pattern> COUNT <count>`.
pub fn scan(cursor: u64, pattern: &[u8], count: usize) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count);
    cmd
}

/// A primary of a Redis Cluster, as `CLUSTER SLOTS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `host:port` as the cluster announces it (for messages).
    pub address: String,
    /// A slot the primary serves: commands routed by this slot reach it.
    pub slot: u16,
}

/// The distinct primaries in a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id...],
/// replicas...], ...]`), each with the first slot of its first range, in reply order. `Err`
/// names what is malformed.
pub fn cluster_primaries(reply: &Value) -> Result<Vec<Primary>, &'static str> {
    let Value::Array(ranges) = reply else {
        return Err("CLUSTER SLOTS did not answer an array");
    };
    let mut primaries: Vec<Primary> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err("a CLUSTER SLOTS range is not an array");
        };
        let (Some(Value::Int(start)), Some(Value::Array(node))) = (fields.first(), fields.get(2))
        else {
            return Err("a CLUSTER SLOTS range lacks its start slot or its primary");
        };
        let slot = u16::try_from(*start)
            .ok()
            .filter(|s| *s < 16384)
            .ok_or("a CLUSTER SLOTS range starts outside 0..16384")?;
        let host = match node.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => return Err("a CLUSTER SLOTS primary lacks its host"),
        };
        let Some(Value::Int(port)) = node.get(1) else {
            return Err("a CLUSTER SLOTS primary lacks its port");
        };
        let address = format!("{host}:{port}");
        if !primaries.iter().any(|p| p.address == address) {
            primaries.push(Primary { address, slot });
        }
    }
    if primaries.is_empty() {
        return Err("CLUSTER SLOTS lists no primary (no slot is assigned)");
    }
    Ok(primaries)
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
        let pipe = incr_pipeline([tag_key("tagver:", "category:3")]);
        let cmds: Vec<Vec<String>> = pipe.cmd_iter().map(args).collect();
        assert_eq!(cmds, [vec!["INCR", "tagver:category:3"]]);
    }

    #[test]
    fn scan_command() {
        assert_eq!(
            args(&scan(17, b"product-list:\\*", 1000)),
            ["SCAN", "17", "MATCH", "product-list:\\*", "COUNT", "1000"]
        );
    }

    #[test]
    fn slot_chunks_group_by_slot_then_size() {
        let keys: Vec<String> = ["{a}1", "b", "{a}2", "{a}3", "c", "{a}4", "{a}5"]
            .iter()
            .map(|k| k.to_string())
            .collect();
        let groups = slot_chunks(&keys, 2);
        // Every key once; every group within one slot and at most 2 keys.
        let mut seen: Vec<&str> = groups.iter().flatten().map(|k| k.as_str()).collect();
        seen.sort_unstable();
        assert_eq!(seen, ["b", "c", "{a}1", "{a}2", "{a}3", "{a}4", "{a}5"]);
        for group in &groups {
            assert!(!group.is_empty() && group.len() <= 2, "{group:?}");
            let slot = hash_slot(group[0].as_bytes());
            assert!(group.iter().all(|k| hash_slot(k.as_bytes()) == slot));
        }
        // The five `{a}` keys fill three chunks, in their order; `b` and `c` are alone.
        let a: Vec<Vec<&str>> = groups
            .iter()
            .filter(|g| g[0].starts_with("{a}"))
            .map(|g| g.iter().map(|k| k.as_str()).collect())
            .collect();
        assert_eq!(
            a,
            [vec!["{a}1", "{a}2"], vec!["{a}3", "{a}4"], vec!["{a}5"]]
        );
        assert_eq!(groups.len(), 5);
        let cmd = unlink(&groups[0]);
        assert_eq!(args(&cmd)[0], "UNLINK");
        assert!(slot_chunks::<String>(&[], 10).is_empty());
    }

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn primaries_from_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000, "a"),
                node("127.0.0.1", 7003, "a-replica"),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001, "b"),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16000),
                node("127.0.0.1", 7002, "c"),
            ]),
            // A second range of the first primary adds nothing.
            Value::Array(vec![
                Value::Int(16001),
                Value::Int(16383),
                node("127.0.0.1", 7000, "a"),
            ]),
        ]);
        assert_eq!(
            cluster_primaries(&reply).unwrap(),
            [
                Primary {
                    address: "127.0.0.1:7000".into(),
                    slot: 0
                },
                Primary {
                    address: "127.0.0.1:7001".into(),
                    slot: 5461
                },
                Primary {
                    address: "127.0.0.1:7002".into(),
                    slot: 10923
                },
            ]
        );
    }

    #[test]
    fn malformed_cluster_slots_are_errors() {
        assert!(cluster_primaries(&Value::Nil).is_err());
        assert!(cluster_primaries(&Value::Array(vec![])).is_err());
        let no_port = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![Value::BulkString(b"h".to_vec())]),
        ])]);
        assert!(cluster_primaries(&no_port).is_err());
        let bad_slot = Value::Array(vec![Value::Array(vec![
            Value::Int(20000),
            Value::Int(20001),
            node("h", 1, "x"),
        ])]);
        assert!(cluster_primaries(&bad_slot).is_err());
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

//! Fenced fills (leases) and the read-your-writes watermark: the Redis Functions library
//! `walbust` and the watermark script, built without I/O.
//!
//! The library is public: applications call it from any language with `FCALL` (README, "Fenced
//! fills"; docs/consistency.md argues why it is correct):
//!
//! - `FCALL walbust_get 1 KEY` (more keys: tag keys, below): `[1, value]` on a hit; on a miss a
//!   lease, `[0, token]`; `[2, ""]` while another caller holds a lease on KEY.
//! - `FCALL walbust_fill 1 KEY TOKEN VALUE TTL_MS`: stores VALUE (`TTL_MS` 0: no expiry) and
//!   returns 1 only if KEY still holds the lease TOKEN names; otherwise 0, storing nothing.
//! - `FCALL walbust_caught_up 1 walbust:lsn:<slot> LSN`: 1 when walbust confirmed every
//!   invalidation of WAL up to LSN (Postgres text `16/B374D848`).
//!
//! A lease is a marker stored in KEY itself: a hash with the field [`LEASE_FIELD`] (its token),
//! expiring after `lease_ttl_ms`. Whatever removes KEY (an `UNLINK` of the key, a tag set purge
//! that lists it, a pattern walk that matches it) removes the lease with it, so the invalidation
//! side needs no new work. A hash, not a string: a client that reads KEY with a plain `GET`
//! gets `WRONGTYPE` (and `MGET` a nil), never a marker taken for a cached value.
//!
//! Tag keys after KEY (`FCALL walbust_get 3 KEY tag:a tag:b`): under the `set` strategy the
//! lease registers KEY in each tag set (`SADD`) before the caller reads the database, so a purge
//! of the tag removes the lease; under the `version` strategy the lease records each counter
//! and `walbust_fill` (given the same tag keys) refuses once one of them moved.

use redis::Script;

use super::config::TagStrategy;

/// The library's name, as `FUNCTION LOAD` and `FUNCTION LIST` know it.
pub const LIBRARY: &str = "walbust";
/// Function: look a key up, or take a lease on a miss.
pub const GET: &str = "walbust_get";
/// Function: store a value under a lease.
pub const FILL: &str = "walbust_fill";
/// Function: whether the watermark passed an LSN.
pub const CAUGHT_UP: &str = "walbust_caught_up";
/// The hash field that makes a key a lease marker; its value is the lease's token.
pub const LEASE_FIELD: &str = "walbust_lease";
/// Prefix of the watermark key: `walbust:lsn:<slot>`.
pub const WATERMARK_PREFIX: &str = "walbust:lsn:";

/// The watermark key of a slot.
pub fn watermark_key(slot: &str) -> String {
    format!("{WATERMARK_PREFIX}{slot}")
}

/// Lua shared by the library and the watermark script: an LSN in Postgres text (`X/Y`, two
/// hexadecimal 32-bit halves) as two numbers, and their order. Lua numbers are doubles, exact
/// only to 2^53, so a 64-bit LSN is never folded into one number; the text does not compare as
/// a string either (`9/0` > `10/0`).
macro_rules! lsn_lua {
    () => {
        r"
local function parse_lsn(text)
  local hi, lo = string.match(text or '', '^(%x+)/(%x+)$')
  if hi == nil or #hi > 8 or #lo > 8 then return nil end
  return tonumber(hi, 16), tonumber(lo, 16)
end
local function lsn_at_least(ahi, alo, bhi, blo)
  return ahi > bhi or (ahi == bhi and alo >= blo)
end
"
    };
}

/// Advances the watermark `KEYS[1]` to the LSN `ARGV[1]`, never backwards; returns 1 when it
/// moved. Sent with `EVAL` in the batch's last round trip, so it needs neither the library
/// nor the script cache.
pub const WATERMARK_SCRIPT: &str = concat!(
    lsn_lua!(),
    r"
local nhi, nlo = parse_lsn(ARGV[1])
if nhi == nil then return redis.error_reply('ERR walbust: not an LSN: ' .. tostring(ARGV[1])) end
local ohi, olo = parse_lsn(redis.call('GET', KEYS[1]))
if ohi ~= nil and lsn_at_least(ohi, olo, nhi, nlo) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"
);

/// [`WATERMARK_SCRIPT`] as a [`Script`].
pub fn watermark_script() -> Script {
    Script::new(WATERMARK_SCRIPT)
}

/// The body of the library after its settings; see the module docs for the interface.
const LIBRARY_BODY: &str = concat!(
    lsn_lua!(),
    r"
-- Tokens are unique per lease: the server's time in microseconds and a counter of this
-- library's instance (reset only by a restart or a reload, which the time tells apart).
local issued = 0
local function new_token()
  local now = redis.call('TIME')
  issued = issued + 1
  return now[1] .. string.format('%06d', tonumber(now[2])) .. '-' .. issued
end

local function kind_of(key)
  return redis.call('TYPE', key)['ok']
end

-- The lease's fields ({field = value}) when KEY holds a lease marker, else nil.
local function lease_of(key)
  if kind_of(key) ~= 'hash' then return nil end
  local flat = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  if fields[LEASE_FIELD] == nil then return nil end
  return fields
end

local function walbust_get(keys, args)
  local key = keys[1]
  if key == nil then return redis.error_reply('ERR walbust_get: FCALL walbust_get 1 KEY') end
  local kind = kind_of(key)
  if kind == 'string' then return {1, redis.call('GET', key)} end
  if kind ~= 'none' then
    if lease_of(key) ~= nil then return {2, ''} end
    return redis.error_reply('WRONGTYPE walbust_get: the key holds a ' .. kind .. ', not a cached value')
  end
  local token = new_token()
  local fields = {LEASE_FIELD, token}
  for i = 2, #keys do
    if TAG_STRATEGY == 'set' then
      -- Registered before the caller reads the database: a purge of the tag from now on
      -- removes the lease.
      redis.call('SADD', keys[i], key)
    else
      fields[#fields + 1] = 'v:' .. keys[i]
      fields[#fields + 1] = redis.call('GET', keys[i]) or '0'
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, LEASE_TTL_MS)
  return {0, token}
end

local function walbust_fill(keys, args)
  local key, token, value = keys[1], args[1], args[2]
  local ttl = tonumber(args[3] or '')
  if key == nil or token == nil or value == nil or ttl == nil or ttl < 0 or ttl ~= math.floor(ttl) then
    return redis.error_reply('ERR walbust_fill: FCALL walbust_fill 1 KEY TOKEN VALUE TTL_MS')
  end
  local lease = lease_of(key)
  if lease == nil or lease[LEASE_FIELD] ~= token then return 0 end
  local given = {}
  for i = 2, #keys do given[keys[i]] = true end
  for field, version in pairs(lease) do
    if string.sub(field, 1, 2) == 'v:' then
      local tag = string.sub(field, 3)
      if not given[tag] then
        return redis.error_reply('ERR walbust_fill: pass the tag keys given to walbust_get (' .. tag .. ')')
      end
      if (redis.call('GET', tag) or '0') ~= version then return 0 end
    end
  end
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('SET', key, value)
  end
  return 1
end

local function walbust_caught_up(keys, args)
  -- Without a key: a call that only shows the library is there (walbust's check of each node).
  if keys[1] == nil then return 0 end
  local whi, wlo = parse_lsn(redis.call('GET', keys[1]))
  local hi, lo = parse_lsn(args[1])
  if hi == nil then
    return redis.error_reply('ERR walbust_caught_up: not an LSN: ' .. tostring(args[1]))
  end
  if whi ~= nil and lsn_at_least(whi, wlo, hi, lo) then return 1 end
  return 0
end

redis.register_function('walbust_get', walbust_get)
redis.register_function('walbust_fill', walbust_fill)
redis.register_function{
  function_name = 'walbust_caught_up',
  callback = walbust_caught_up,
  flags = {'no-writes'},
}
"
);

/// The library's source for these settings, as `FUNCTION LOAD` takes it: `lease_ttl_ms` is how
/// long a lease lives, `strategy` how tag keys given to `walbust_get` are used.
pub fn library(lease_ttl_ms: u64, strategy: TagStrategy) -> String {
    let strategy = match strategy {
        TagStrategy::Set => "set",
        TagStrategy::Version => "version",
    };
    format!(
        "#!lua name={LIBRARY}\n\
         -- walbust {version}: fenced fills (leases) and the read-your-writes watermark.\n\
         -- Interface and correctness: walbust's README (\"Fenced fills\") and docs/consistency.md.\n\
         local LEASE_TTL_MS = {lease_ttl_ms}\n\
         local TAG_STRATEGY = '{strategy}'\n\
         local LEASE_FIELD = '{LEASE_FIELD}'\n{LIBRARY_BODY}",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// `FUNCTION LOAD REPLACE <library>`; against a cluster the client sends it to every primary.
pub fn load(library: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(library);
    cmd
}

/// `FCALL walbust_caught_up 1 <watermark key> 0/0`: changes nothing, answers once the library
/// is loaded and the user may call it.
pub fn self_test(slot: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(CAUGHT_UP)
        .arg(1)
        .arg(watermark_key(slot))
        .arg("0/0");
    cmd
}

/// `FCALL walbust_caught_up 0 0/0`: as [`self_test`] without a key, so that it can be sent to
/// any one node of a cluster.
pub fn node_test() -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(CAUGHT_UP).arg(0).arg("0/0");
    cmd
}

/// Whether `err` says the library is not loaded (`ERR Function not found`).
pub fn is_missing(err: &redis::RedisError) -> bool {
    err.code() == Some("ERR") && err.to_string().contains("Function not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_carries_its_settings() {
        let lib = library(2500, TagStrategy::Version);
        assert!(lib.starts_with("#!lua name=walbust\n"), "{lib}");
        assert!(lib.contains("local LEASE_TTL_MS = 2500\n"));
        assert!(lib.contains("local TAG_STRATEGY = 'version'\n"));
        for function in [GET, FILL, CAUGHT_UP] {
            assert!(
                lib.contains(&format!("register_function('{function}'"))
                    || lib.contains(&format!("function_name = '{function}'")),
                "{function}"
            );
        }
    }

    #[test]
    fn watermark_key_names_the_slot() {
        assert_eq!(watermark_key("walbust"), "walbust:lsn:walbust");
    }
}

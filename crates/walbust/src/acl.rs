//! What walbust needs of a Redis ACL, and `walbust check --db`'s test of it.
//!
//! [`needs`] lists every command walbust sends for the configuration at
//! hand (the feature that needs it, and the keys or channel it touches),
//! read off the code that sends them: the sink's purges, its tag script
//! (whose own calls the ACL checks too), the gap marker, the health check.
//! The README's "Redis ACL" section is the same list in words.
//!
//! [`verify`] tests the list against the user walbust logs in as:
//!
//! - with `ACL DRYRUN` (Redis 7, allowed to users with `+acl|dryrun`, which
//!   `+@all` includes): every command with the keys it would touch, exactly;
//! - otherwise by probes that change nothing (a `GET` of the marker, a
//!   `SET ... XX` and an `UNLINK` of a key that does not exist, `EVALSHA` of
//!   the tag script, which purges nothing without keys...). A command no
//!   probe can try without an effect (`INCR`, `PUBLISH`) is reported as
//!   unverified, a warning, so that the operator compares it with the README.

use redis::{ErrorKind, ServerErrorKind};
use walbust_publish::redis_sink::{
    functions, request, PatternStrategy, RedisConnection, RedisSinkConfig, TagStrategy,
};
use walbust_rules::RuleSet;

use crate::config::{Config, OnGap};

/// One command walbust sends, with the arguments it is tried with.
#[derive(Debug, Clone)]
pub struct Need {
    /// The command as ACL rules name it, lower case (`unlink`, `script|load`).
    pub command: &'static str,
    /// Why walbust sends it.
    pub feature: &'static str,
    /// Arguments as `ACL DRYRUN` takes them after the command (keys included).
    pub args: Vec<String>,
    /// A call of the command that changes nothing, to try it when `ACL
    /// DRYRUN` is not allowed; `None` when there is none.
    pub probe: Option<redis::Cmd>,
}

/// The result of [`verify`] for one [`Need`].
#[derive(Debug)]
pub enum Verdict {
    Allowed,
    /// Refused, with the server's reason and the ACL rule that allows it.
    Denied {
        reason: String,
        rule: String,
    },
    /// Could not be tried without changing anything.
    Unverified,
}

/// How [`verify`] could test the needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Method {
    DryRun,
    Probes,
}

/// Every command walbust sends to Redis under `cfg` and `rules`.
pub fn needs(cfg: &Config, redis: &RedisSinkConfig, rules: &RuleSet) -> Vec<Need> {
    let marker = crate::gap::marker_key(&cfg.source.slot);
    // A key next to the marker that nobody writes: probes on it change nothing.
    let probe_key = format!("{marker}:check");
    let tag_probe = request::tag_key(redis.tag_prefix(), "walbust-check");
    let mut out = Vec::new();
    let mut need = |command, feature, args: Vec<String>, probe: Option<redis::Cmd>| {
        out.push(Need {
            command,
            feature,
            args,
            probe,
        })
    };
    let cmd = |parts: &[&str]| {
        let mut c = redis::cmd(parts[0]);
        for p in &parts[1..] {
            c.arg(*p);
        }
        c
    };
    need("ping", "health check", vec![], Some(cmd(&["PING"])));
    need(
        "get",
        "gap marker",
        vec![marker.clone()],
        Some(cmd(&["GET", &marker])),
    );
    need(
        "set",
        "gap marker",
        vec![marker.clone(), "v".into()],
        Some(cmd(&["SET", &probe_key, "", "XX"])),
    );
    need(
        "eval",
        "gap marker (replaced only if unchanged)",
        vec!["return 0".into(), "1".into(), marker.clone()],
        Some(cmd(&["EVAL", "return 0", "1", &probe_key])),
    );
    let mut samples: Vec<String> = {
        let coverage = rules.coverage();
        coverage
            .keys
            .iter()
            .chain(&coverage.patterns)
            .map(|glob| sample_key(glob))
            .collect()
    };
    samples.dedup();
    if samples.is_empty() {
        samples.push(probe_key.clone());
    }
    for key in &samples {
        need(
            "unlink",
            "deleting cached keys",
            vec![key.clone()],
            Some(cmd(&["UNLINK", &probe_key])),
        );
    }
    need(
        "scan",
        "pattern purges",
        vec!["0".into(), "MATCH".into(), probe_key.clone()],
        Some(cmd(&["SCAN", "0", "MATCH", &probe_key, "COUNT", "1"])),
    );
    if redis.pattern_strategy == PatternStrategy::Version {
        need(
            "incr",
            "pattern purges (version strategy)",
            vec![format!("{}acl-probe:", redis.pattern_prefix())],
            None,
        );
    }
    match redis.tag_strategy {
        TagStrategy::Set => {
            let script = request::tag_set_purge_script();
            need(
                "evalsha",
                "tag purges (set strategy)",
                vec![script.get_hash().to_owned(), "1".into(), tag_probe.clone()],
                // Without keys the script purges nothing.
                Some(cmd(&["EVALSHA", script.get_hash(), "0"])),
            );
            need(
                "script|load",
                "tag purges (set strategy)",
                vec!["LOAD".into(), request::TAG_SET_PURGE_SCRIPT.into()],
                // The very script the sink loads.
                Some(cmd(&["SCRIPT", "LOAD", request::TAG_SET_PURGE_SCRIPT])),
            );
            for command in ["type", "smembers"] {
                need(
                    command,
                    "tag purges (set strategy, inside the tag script)",
                    vec![tag_probe.clone()],
                    Some(cmd(&[command, &tag_probe])),
                );
            }
            need(
                "unlink",
                "tag purges (set strategy, inside the tag script)",
                vec![tag_probe.clone()],
                Some(cmd(&["UNLINK", &tag_probe])),
            );
        }
        TagStrategy::Version => need(
            "incr",
            "tag purges (version strategy)",
            vec![tag_probe.clone()],
            None,
        ),
    }
    if let Some(channel) = &redis.publish_channel {
        need(
            "publish",
            "publish_channel",
            vec![channel.clone(), "{}".into()],
            None,
        );
    }
    if rules.rules().iter().any(|r| !r.at.is_empty()) {
        let key = walbust_publish::redis_sink::schedule::schedule_key(Some(&cfg.source.slot));
        let feature = "scheduled invalidation (at:)";
        need(
            "zadd",
            feature,
            vec![key.clone(), "0".into(), "{}".into()],
            None,
        );
        for (command, args) in [
            ("zrange", vec!["0", "0"]),
            ("zcard", vec![]),
            ("zrem", vec!["{}"]),
        ] {
            let mut probe = redis::cmd(command);
            probe.arg(&key).arg(&args);
            let mut full = vec![key.clone()];
            full.extend(args.iter().map(|a| (*a).to_owned()));
            // ZREM of a member walbust never writes changes nothing.
            need(command, feature, full, Some(probe));
        }
    }
    if redis.wait_replicas > 0 {
        need(
            "wait",
            "wait_replicas",
            vec!["1".into(), "0".into()],
            Some(cmd(&["WAIT", "0", "0"])),
        );
    }
    if let Some(stream) = &redis.refresh_stream {
        need(
            "xadd",
            "refresh_stream",
            vec![stream.clone(), "*".into(), "keys".into(), "[]".into()],
            None,
        );
    }
    if cfg.source.on_gap == OnGap::Purge {
        need(
            "del",
            "on_gap: purge (removing the old marker)",
            vec![marker.clone()],
            Some(cmd(&["DEL", &probe_key])),
        );
    }
    if redis.functions() {
        let feature = "leases and watermark (the functions library)";
        need(
            "function|load",
            feature,
            vec!["LOAD".into(), "REPLACE".into(), redis.library()],
            // A library without functions is refused after the ACL let it through.
            Some(cmd(&["FUNCTION", "LOAD", "#!lua name=walbust_acl_probe\n"])),
        );
        // The call `run` makes once the library is loaded, read-only.
        need(
            "fcall",
            feature,
            vec![
                functions::CAUGHT_UP.into(),
                "1".into(),
                functions::watermark_key(&cfg.source.slot),
                "0/0".into(),
            ],
            Some(functions::self_test(&cfg.source.slot)),
        );
    }
    if redis.watermark {
        let key = functions::watermark_key(&cfg.source.slot);
        need(
            "eval",
            "watermark (raised by a script)",
            vec!["return 0".into(), "1".into(), key.clone()],
            Some(cmd(&["EVAL", "return 0", "1", &key])),
        );
        let feature = "watermark (inside the script)";
        need("get", feature, vec![key.clone()], Some(cmd(&["GET", &key])));
        // `SET ... XX` of a key nobody writes changes nothing.
        let probe = format!("{key}:check");
        need(
            "set",
            feature,
            vec![key.clone(), "0/0".into()],
            Some(cmd(&["SET", &probe, "", "XX"])),
        );
    }
    let db = database(redis);
    if db != 0 {
        let db = db.to_string();
        need(
            "select",
            "a database other than 0",
            vec![db.clone()],
            Some(cmd(&["SELECT", &db])),
        );
    }
    out
}

/// The user walbust logs in as (`ACL WHOAMI`, else the URL's, else `default`).
pub async fn user(conn: &mut RedisConnection, redis: &RedisSinkConfig) -> String {
    if let Ok(name) = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async::<String>(conn)
        .await
    {
        return name;
    }
    redis::IntoConnectionInfo::into_connection_info(redis.url.as_str())
        .ok()
        .and_then(|info| info.redis_settings().username().map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned())
}

/// Tests every need as `user`, by `ACL DRYRUN` where the user may run it,
/// else by the probes.
pub async fn verify(
    conn: &mut RedisConnection,
    user: &str,
    needs: &[Need],
) -> Result<(Method, Vec<Verdict>), redis::RedisError> {
    let mut verdicts = Vec::with_capacity(needs.len());
    for (i, need) in needs.iter().enumerate() {
        let mut dry = redis::cmd("ACL");
        dry.arg("DRYRUN").arg(user);
        // A subcommand (`script|load`) is the first of the arguments.
        let command = need.command.split('|').next().unwrap_or(need.command);
        dry.arg(command).arg(&need.args);
        match dry.query_async::<String>(conn).await {
            Ok(reply) if reply == "OK" => verdicts.push(Verdict::Allowed),
            Ok(reason) => verdicts.push(Verdict::Denied {
                rule: rule_for(need, &reason),
                reason,
            }),
            // Not allowed to this user (or a Redis before 7): probe instead.
            Err(e) if i == 0 && e.code().is_some() => return probe(conn, needs).await,
            Err(e) => return Err(e),
        }
    }
    Ok((Method::DryRun, verdicts))
}

async fn probe(
    conn: &mut RedisConnection,
    needs: &[Need],
) -> Result<(Method, Vec<Verdict>), redis::RedisError> {
    let mut verdicts = Vec::with_capacity(needs.len());
    for need in needs {
        let Some(probe) = &need.probe else {
            verdicts.push(Verdict::Unverified);
            continue;
        };
        match probe.query_async::<redis::Value>(conn).await {
            Err(e) if is_noperm(&e) => {
                let reason = e.detail().unwrap_or_default().to_owned();
                verdicts.push(Verdict::Denied {
                    rule: rule_for(need, &reason),
                    reason,
                });
            }
            // Refused for another reason (NOSCRIPT, a wrong type): the
            // permission was granted.
            Err(e) if e.code().is_some() => verdicts.push(Verdict::Allowed),
            Err(e) => return Err(e),
            Ok(_) => verdicts.push(Verdict::Allowed),
        }
    }
    Ok((Method::Probes, verdicts))
}

fn is_noperm(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
}

/// The ACL rule that allows `need`, from the server's reason for refusing it.
fn rule_for(need: &Need, reason: &str) -> String {
    let reason = reason.to_ascii_lowercase();
    if reason.contains(" key") {
        let key = need
            .args
            .iter()
            .find(|a| reason.contains(&a.to_ascii_lowercase()))
            .map(String::as_str)
            .unwrap_or("<key>");
        format!("~{key} (or a pattern matching it)")
    } else if reason.contains(" channel") {
        format!(
            "&{}",
            need.args.first().map(String::as_str).unwrap_or("<channel>")
        )
    } else {
        format!("+{}", need.command)
    }
}

/// The Redis database the URL selects.
fn database(redis: &RedisSinkConfig) -> i64 {
    redis::IntoConnectionInfo::into_connection_info(redis.url.as_str())
        .map(|info| info.redis_settings().db())
        .unwrap_or(0)
}

/// A key that `glob` matches: every wildcard replaced by `0`, escapes
/// removed, a character class by its first character.
fn sample_key(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '*' | '?' => out.push('0'),
            '[' => {
                let mut first = None;
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    first.get_or_insert(c);
                }
                out.extend(first);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_keys_match_their_globs() {
        assert_eq!(sample_key("shop:product:*"), "shop:product:0");
        assert_eq!(sample_key("a\\*b?[xy]"), "a*b0x");
    }
}

//! What rules with `at:` (scheduled invalidation) and `refresh: true` need from the
//! configuration, checked by `walbust check` and before `walbust run` streams anything.
//!
//! The schedule is durable only where a sink stores it: the Redis sink keeps it in a sorted set
//! written in the round trip that confirms the batch. Kafka cannot hold a schedule (a record
//! cannot wait until its time), so rules with `at:` without a Redis sink are refused rather than
//! silently never invalidated again.

use walbust_rules::RuleSet;

use crate::config::Config;

/// Errors, one line each, naming the rule and what is missing.
pub fn problems(cfg: &Config, rules: &RuleSet) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules.rules() {
        let name = format!(
            "{}:{}: rule {} ({})",
            rules.origin(),
            rule.line,
            rule.index + 1,
            rule.table
        );
        if !rule.at.is_empty() && cfg.sinks.redis.is_none() {
            out.push(format!(
                "{name}: `at:` needs sinks.redis, which stores the schedule \
                 (Kafka alone cannot keep invalidations for later)"
            ));
        }
        if rule.refresh
            && cfg
                .sinks
                .redis
                .as_ref()
                .is_none_or(|r| r.refresh_stream.is_none())
        {
            out.push(format!(
                "{name}: `refresh: true` needs sinks.redis.refresh_stream, the stream warmers read"
            ));
        }
    }
    out
}

/// Notes for `walbust check` about rules with `at:`: the horizon past which timestamps are
/// refused.
pub fn notes(cfg: &Config, rules: &RuleSet) -> Vec<String> {
    let scheduling = rules.rules().iter().filter(|r| !r.at.is_empty()).count();
    match (&cfg.sinks.redis, scheduling) {
        (Some(redis), n) if n > 0 => vec![format!(
            "warning: {n} rule(s) schedule invalidations (at:); timestamps more than {} days \
             ahead are refused and counted in walbust_scheduled_refused_total{{reason=\"horizon\"}} \
             (sinks.redis.schedule_horizon_days)",
            redis.schedule_horizon_days
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
version: 1
rules:
  - table: promotions
    keys: ["promotion:{code}", "promotions:active"]
    at: ["{ends_at}"]
  - table: restaurants
    keys: ["restaurant:{id}"]
    refresh: true
"#;

    fn config(sinks: &str) -> Config {
        let text = format!(
            "source:\n  url: postgres://walbust@db/app\n  publication: walbust\n  slot: walbust\nrules: rules.yaml\nsinks:\n{sinks}"
        );
        Config::parse(&text, "walbust.yaml", |_| None).unwrap()
    }

    #[test]
    fn kafka_alone_cannot_keep_a_schedule_nor_a_refresh_stream() {
        let rules = RuleSet::from_yaml(RULES, "rules.yaml").unwrap();
        let kafka = config("  kafka:\n    brokers: k:9092\n    topic: t\n");
        let found = problems(&kafka, &rules);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("rule 1 (promotions): `at:` needs sinks.redis"));
        assert!(found[1].contains("needs sinks.redis.refresh_stream"));

        let redis =
            config("  redis:\n    url: redis://cache:6379\n    refresh_stream: walbust:refresh\n");
        assert!(problems(&redis, &rules).is_empty());
        let notes = notes(&redis, &rules);
        assert!(
            notes[0].contains("more than 400 days ahead are refused"),
            "{notes:?}"
        );
    }
}

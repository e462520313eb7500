//! `walbust check`: validate before running.
//!
//! Offline it loads the configuration and the rules exactly as `run` does,
//! except that an unset `${VAR}` is a note, checked with a placeholder (CI
//! need not hold production secrets).
//! With `--db` it also asks the database and the sinks, read-only: it never
//! creates the publication or the slot, it says whether `run` would.
//!
//! The database part reports every problem it finds, one line each, instead
//! of stopping at the first:
//!
//! | line | problem |
//! |---|---|
//! | `error:` | a table the rules name does not exist |
//! | `error:` | it is not in the publication, or its changes arrive under another name (partitions and `publish_via_partition_root`) |
//! | `error:` | a rule reads a column the table does not have or the stream does not send (bound with [`walbust_rules::RuleSet::bind`] against the catalog's columns) |
//! | `error:` | the publication withholds what the rules need: an operation they react to (`publish`), a row filter on their table, a column they read left out of its column list ([`walbust_cdc::source::withheld`], what `run` refuses) |
//! | `error:` | a rule reads old values ([`walbust_rules::BoundTable::needs_old_values`]) the replica identity does not send (for a partitioned table, each leaf partition's identity counts) |
//! | `warning:` | a TOAST-able column is used in a template of a rule that reacts to updates, without `REPLICA IDENTITY FULL`: an UPDATE that does not touch it sends it as unchanged TOAST and the template is skipped |
//! | `warning:` | a table glob matches no table, or a table outside the publication |
//! | `error:` | the role cannot open a replication connection (no `REPLICATION`, pg_hba.conf) |
//! | `error:` | a gap marker (the Redis key, or the row in the database's `walbust_marker.slots`) says the slot is gone or the server is another one ([`crate::gap::find_gap`]) and `source.on_gap` is `refuse` |
//! | `warning:` | with `source.failover`: `synchronized_standby_slots` is empty, or a standby of a multi-host `source.url` would not keep the slot over a promotion |
//! | `error:` | a replica of `source.replicas` is unreachable or not a standby (`pg_is_in_recovery()` false); `ok:` lines show each replica's replay lag |
//! | `error:` | the Redis user may not run a command walbust needs ([`crate::acl`]); `warning:` if one could not be verified |
//! | `error:` | `sinks.redis.leases` or `watermark` on, and the Redis has no Functions (before 7) |
//!
//! The exit status is 1 when there was any error.

use std::path::Path;
use std::process::ExitCode;

use tokio_postgres::Client;
use walbust_cdc::catalog::{self, Identity, Publication, ReplicaIdentity, TableInfo, TableKind};
use walbust_rules::{RuleInfo, RuleSet, Side, TableName};

use crate::config::{Config, Unset};
use crate::explain::parse_table;
use walbust_flow::Chain;

use crate::{fail_config, run, EXIT_FAILURE};

/// The configuration and its rules, or the exit of a configuration error.
/// `connects`: `path`'s source.url will be connected with, so every `${VAR}`
/// must be set, as for `run`; otherwise an unset one reads as its name and
/// is returned (CI validates without secrets).
pub(crate) fn load(path: &Path, connects: bool) -> Result<(Config, Vec<Unset>, RuleSet), ExitCode> {
    let loaded = if connects {
        Config::load(path).map(|cfg| (cfg, Vec::new()))
    } else {
        Config::load_offline(path)
    };
    let (cfg, unset) = loaded.map_err(fail_config)?;
    let rules = RuleSet::load(&cfg.rules).map_err(fail_config)?;
    rule_problems(&cfg, &rules).map_err(fail_config)?;
    Ok((cfg, unset, rules))
}

/// What the configuration refuses in a rule set, as one message: the same at start-up, in
/// `check` and for every reload of the rules file.
pub(crate) fn rule_problems(cfg: &Config, rules: &RuleSet) -> Result<(), String> {
    let mut problems = crate::time_rules::problems(cfg, rules);
    if let Err(e) = versioned_patterns(cfg, rules) {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// With `sinks.redis.pattern_strategy: version`, refuses rules whose patterns cannot be a
/// counter: each must render a non-empty literal prefix then one `*` (`plist:{id}:*`), the
/// prefix the counter stands for. The error names each such rule and pattern shape.
pub(crate) fn versioned_patterns(cfg: &Config, rules: &RuleSet) -> Result<(), String> {
    use walbust_publish::redis_sink::PatternStrategy;
    let Some(redis) = &cfg.sinks.redis else {
        return Ok(());
    };
    if redis.pattern_strategy != PatternStrategy::Version {
        return Ok(());
    }
    let refused: Vec<String> = rules
        .pattern_samples()
        .into_iter()
        .filter(|(_, sample)| walbust_glob::Glob::new(sample).prefix_star().is_none())
        .map(|(info, sample)| {
            format!(
                "rule {} ({}, line {}): pattern `{sample}`",
                info.index + 1,
                info.table,
                info.line
            )
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "sinks.redis.pattern_strategy: version needs patterns made of a literal prefix then one \
         `*` (such as \"plist:{{id}}:*\"), the prefix whose counter they bump; these are not \
         (shown with each placeholder as x): {}. Use pattern_strategy: walk, or change the \
         patterns",
        refused.join("; ")
    ))
}

pub async fn check(path: &Path, db: bool) -> ExitCode {
    let (cfg, unset, rules) = match load(path, db) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    let tables: Vec<String> = rules.tables().iter().map(|t| t.to_string()).collect();
    println!(
        "ok: {} valid; {} rules over {} ({})",
        path.display(),
        rules.rules().len(),
        cfg.rules.display(),
        if tables.is_empty() {
            "no exact tables".to_string()
        } else {
            tables.join(", ")
        }
    );
    for var in &unset {
        println!("note: {var}");
    }
    for note in crate::time_rules::notes(&cfg, &rules) {
        println!("{note}");
    }
    if !db {
        return ExitCode::SUCCESS;
    }

    let mut report = Report::default();
    let mut gap_refused = false;
    match run::build_sinks(&cfg).await {
        Ok(sinks) => {
            for sink in &sinks {
                match sink.health().await {
                    Ok(()) => report.ok(format!("sink {} is healthy", sink.name())),
                    Err(e) => report.error(format!("sink {}: {}", sink.name(), Chain(&e))),
                }
            }
            if let Some(redis) = cfg.sinks.redis.as_ref().filter(|_| !sinks.is_empty()) {
                redis_acl(&cfg, redis, &rules, &mut report).await;
            }
            gap_refused = gap_marker(&cfg, &mut report).await;
        }
        Err(e) => report.error(Chain(e.as_ref()).to_string()),
    }

    let client = match walbust_cdc::source::connect(&cfg.source.url).await {
        Ok(c) => c,
        Err(e) => {
            report.error(Chain(&e).to_string());
            return report.finish();
        }
    };
    encryption(&client, &cfg, &mut report).await;
    // `run` opens one before anything else; a role without REPLICATION, or
    // a pg_hba.conf without a line for it, fails here.
    match crate::gap::system_identifier(&cfg).await {
        Ok(_) => report.ok("the role may open a replication connection"),
        Err(e) => report.error(Chain(&e).to_string()),
    }
    replica_checks(&client, &cfg, &mut report).await;
    failover_checks(&client, &cfg, &mut report).await;
    let publication = source_checks(&client, &cfg, gap_refused, &mut report).await;
    // What the publication withholds from the rules, in the words `run`
    // refuses with.
    for problem in publication
        .iter()
        .flat_map(|p| walbust_cdc::source::withheld(p, &rules))
    {
        report.error(Chain(&problem).to_string());
    }
    if cfg.source.binary && publication.is_some() {
        match walbust_cdc::relations::check_binary(&client, &cfg.source.publication, &rules).await {
            Ok(_) => {
                report.ok("binary mode: every published column the rules read can be rendered")
            }
            Err(e) => report.error(Chain(&e).to_string()),
        }
    }
    let cx = TableCx {
        client: &client,
        rules: &rules,
        publication: publication.as_ref(),
        create: cfg.source.create,
    };
    if let Err(e) = cx.check_tables(&mut report).await {
        report.error(Chain(&e).to_string());
    }
    report.finish()
}

/// Whether the Redis user may run every command walbust sends (see
/// [`crate::acl`]).
async fn redis_acl(
    cfg: &Config,
    redis: &walbust_publish::redis_sink::RedisSinkConfig,
    rules: &RuleSet,
    report: &mut Report,
) {
    let mut conn = match walbust_publish::redis_sink::RedisConnection::connect(redis).await {
        Ok(conn) => conn,
        Err(e) => return report.error(format!("sink redis: {}", Chain(&e))),
    };
    if redis.functions() {
        redis_functions(&mut conn, &cfg.source.slot, report).await;
    }
    let user = crate::acl::user(&mut conn, redis).await;
    let needs = crate::acl::needs(cfg, redis, rules);
    let (method, verdicts) = match crate::acl::verify(&mut conn, &user, &needs).await {
        Ok(found) => found,
        Err(e) => return report.error(format!("sink redis: checking the ACL: {}", Chain(&e))),
    };
    let mut unverified: Vec<&str> = Vec::new();
    let mut denied = false;
    for (need, verdict) in needs.iter().zip(&verdicts) {
        match verdict {
            crate::acl::Verdict::Allowed => {}
            crate::acl::Verdict::Denied { reason, rule } => {
                denied = true;
                report.error(format!(
                    "sink redis: ACL user {user} may not run {} ({}): {reason}; allow it with ACL SETUSER {user} {rule} (README, \"Redis ACL\")",
                    need.command.to_ascii_uppercase(),
                    need.feature
                ))
            }
            crate::acl::Verdict::Unverified => {
                if !unverified.contains(&need.command) {
                    unverified.push(need.command);
                }
            }
        }
    }
    let how = match method {
        crate::acl::Method::DryRun => "tested with ACL DRYRUN",
        crate::acl::Method::Probes => {
            "probed without changing anything, since ACL DRYRUN is not allowed to it"
        }
    };
    if !denied {
        report.ok(format!(
            "sink redis: ACL user {user} may run the commands walbust needs ({how})"
        ));
    }
    if !unverified.is_empty() {
        let rules: Vec<String> = unverified.iter().map(|c| format!("+{c}")).collect();
        report.warning(format!(
            "sink redis: could not verify that ACL user {user} may run {} without ACL DRYRUN (which needs +acl|dryrun): make sure its ACL has {} (README, \"Redis ACL\")",
            unverified.join(", ").to_ascii_uppercase(),
            rules.join(" ")
        ));
    }
}

/// Whether the Redis has Functions (Redis 7+, Valkey), which `sinks.redis.leases` and
/// `watermark` need, and whether the library is loaded already (`run` loads it): the call
/// `run` makes once it loaded it, which changes nothing. A refused permission is left to the
/// ACL lines.
async fn redis_functions(
    conn: &mut walbust_publish::redis_sink::RedisConnection,
    slot: &str,
    report: &mut Report,
) {
    use walbust_publish::redis_sink::functions;
    let called = functions::self_test(slot)
        .query_async::<redis::Value>(conn)
        .await;
    match called {
        Ok(_) => report.ok(format!(
            "sink redis: library {} loaded (walbust run loads it again, REPLACE)",
            functions::LIBRARY
        )),
        Err(e) if functions::is_missing(&e) => report.ok(format!(
            "sink redis: Redis Functions available; walbust run will load library {}",
            functions::LIBRARY
        )),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {}
        Err(e) => report.error(format!(
            "sink redis: sinks.redis.leases (or watermark) needs Redis Functions (Redis 7 or later, or Valkey): FCALL failed: {}",
            Chain(&e)
        )),
    }
}

/// What `run` will find in the gap marker: a gap is refused with
/// `source.on_gap: refuse` (true), purged with `purge`.
async fn gap_marker(cfg: &Config, report: &mut Report) -> bool {
    let found = match crate::gap::find_gap(cfg, None).await {
        Ok(Some(found)) => found,
        Ok(None) => return false,
        Err(e) => {
            report.error(format!("gap marker: {}", Chain(e.as_ref())));
            return false;
        }
    };
    let Some(crate::gap::GapFound { marker, why }) = found else {
        return false;
    };
    match cfg.source.on_gap {
        crate::config::OnGap::Refuse => report.error(
            crate::gap::GapError {
                slot: cfg.source.slot.clone(),
                key: marker,
                why,
            }
            .to_string(),
        ),
        crate::config::OnGap::Purge => report.note(format!(
            "gap in the change stream ({why}): `walbust run` will purge everything the rules cover first (source.on_gap: purge)"
        )),
    }
    cfg.source.on_gap == crate::config::OnGap::Refuse
}

/// Each of `source.replicas` must answer and be a standby; its replay lag
/// is shown against the primary's current WAL position.
async fn replica_checks(client: &Client, cfg: &Config, report: &mut Report) {
    if cfg.source.replicas.is_empty() {
        return;
    }
    let primary = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .ok()
        .map(|row| row.get::<_, i64>(0) as u64);
    for (i, replica) in cfg.source.replicas.iter().enumerate() {
        let name = replica.name();
        let field = format!("source.replicas[{i}]");
        match walbust_cdc::replicas::probe(&replica.url).await {
            Ok(status) if !status.in_recovery => report.error(format!(
                "replica {name} ({field}) is not a standby (pg_is_in_recovery() is false): list the read replicas applications read from, not the primary; every batch would wait source.replica_wait_max_ms for it"
            )),
            Ok(status) => {
                let replayed = status.replay_lsn.unwrap_or(0);
                let lag = match primary {
                    Some(primary) => format!(
                        "{} byte(s) behind the primary",
                        primary.saturating_sub(replayed)
                    ),
                    None => "lag unknown".to_owned(),
                };
                report.ok(format!(
                    "replica {name} is a reachable standby, replayed up to {} ({lag}); batches wait for it up to {} ms",
                    walbust_pgoutput::format_lsn(replayed),
                    cfg.source.replica_wait_max_ms
                ));
            }
            Err(e) => report.error(format!(
                "replica {name} ({field}): {}; batches would wait source.replica_wait_max_ms for it",
                Chain(&e)
            )),
        }
    }
}

/// Whether the SQL connection to Postgres is encrypted, as the server sees
/// it: under the default `sslmode=prefer` a server without TLS is reached
/// in plaintext, which deserves a word.
async fn encryption(client: &Client, cfg: &Config, report: &mut Report) {
    let sslmode = walbust_cdc::ConnParams::from_url(&cfg.source.url)
        .map(|c| c.tls.effective_mode().as_str())
        .unwrap_or("prefer");
    let row = client
        .query_opt(
            "SELECT ssl, coalesce(version, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await;
    match row {
        Ok(Some(row)) if row.get::<_, bool>(0) => report.ok(format!(
            "the connection to Postgres is encrypted ({}, sslmode={sslmode})",
            row.get::<_, String>(1)
        )),
        Ok(_) => report.note(format!(
            "the connection to Postgres is not encrypted (sslmode={sslmode}): set sslmode=verify-full and sslrootcert in source.url (README, \"Security\")"
        )),
        Err(e) => report.note(format!(
            "could not tell whether the connection to Postgres is encrypted: {}",
            Chain(&e)
        )),
    }
}

/// With `source.failover`: whether a standby keeps a copy of the slot. The
/// primary tells which physical slots `synchronized_standby_slots` waits
/// for and which standbys stream; the other hosts of a multi-host
/// `source.url`, when they answer, tell their own settings and whether they
/// hold a synced copy of the slot.
async fn failover_checks(client: &Client, cfg: &Config, report: &mut Report) {
    if !cfg.source.failover {
        return;
    }
    let major = match walbust_cdc::source::server_major(client).await {
        Ok(major) => major,
        Err(e) => {
            return report.warning(format!("could not read the server version: {}", Chain(&e)))
        }
    };
    if major < 17 {
        // prepare() already reported the refusal with its reason.
        return;
    }
    let standby_slots = client
        .query_one("SHOW synchronized_standby_slots", &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .unwrap_or_default();
    if standby_slots.trim().is_empty() {
        report.warning(
            "source.failover: synchronized_standby_slots is empty on the primary: walbust may then receive changes a standby has not, and a standby may not be able to keep its copy of the slot in step (set it to the standbys' physical slots; README, HA and failover)",
        );
    } else {
        report.ok(format!(
            "source.failover: the primary sends walbust only what the standbys of synchronized_standby_slots ({standby_slots}) received"
        ));
    }
    let Ok(conn) = walbust_cdc::ConnParams::from_url(&cfg.source.url) else {
        return;
    };
    if conn.hosts.len() <= 1 {
        report.note(
            "source.failover: source.url names one host; after a promotion walbust reaches the new primary only if that name moves to it (or list every host: postgres://a,b/db?target_session_attrs=read-write)",
        );
        return;
    }
    for (host, port) in &conn.hosts {
        let Some(standby) = walbust_cdc::source::connect_host(&cfg.source.url, host, *port).await
        else {
            report.note(format!(
                "source.failover: {host}:{port} did not answer; its settings are not checked"
            ));
            continue;
        };
        let in_recovery = standby
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .is_ok_and(|row| row.get::<_, bool>(0));
        if !in_recovery {
            continue;
        }
        let setting = |name: &'static str| {
            let standby = &standby;
            async move {
                standby
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .map(|row| row.get::<_, String>(0))
                    .unwrap_or_default()
            }
        };
        let sync = setting("sync_replication_slots").await;
        let feedback = setting("hot_standby_feedback").await;
        let synced = standby
            .query_opt(
                "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.source.slot],
            )
            .await
            .ok()
            .flatten()
            .is_some_and(|row| row.get::<_, bool>(0));
        if sync == "on" && feedback == "on" && synced {
            report.ok(format!(
                "source.failover: standby {host}:{port} keeps a synced copy of slot {}",
                cfg.source.slot
            ));
        } else {
            report.warning(format!(
                "source.failover: standby {host}:{port} would not keep the slot over a promotion (sync_replication_slots={sync}, hot_standby_feedback={feedback}, synced copy of slot {}: {})",
                cfg.source.slot,
                if synced { "yes" } else { "not yet" }
            ));
        }
    }
}

/// Problems found so far, printed as they are found.
#[derive(Default)]
struct Report {
    errors: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, line: impl AsRef<str>) {
        println!("ok: {}", line.as_ref());
    }

    fn note(&mut self, line: impl AsRef<str>) {
        println!("note: {}", line.as_ref());
    }

    fn error(&mut self, line: impl AsRef<str>) {
        self.errors += 1;
        println!("error: {}", line.as_ref());
    }

    fn warning(&mut self, line: impl AsRef<str>) {
        self.warnings += 1;
        println!("warning: {}", line.as_ref());
    }

    fn finish(self) -> ExitCode {
        println!("{} error(s), {} warning(s)", self.errors, self.warnings);
        if self.errors > 0 {
            ExitCode::from(EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// `wal_level`, the publication and the slot, as `run` checks them at
/// start-up (without creating anything). Returns the publication, if any.
/// `gap_refused`: `run` stops on the gap marker before it would create a
/// missing slot, so that is not promised.
async fn source_checks(
    client: &Client,
    cfg: &Config,
    gap_refused: bool,
    report: &mut Report,
) -> Option<Publication> {
    let spec = walbust_cdc::SourceSpec {
        url: cfg.source.url.clone(),
        publication: cfg.source.publication.clone(),
        slot: cfg.source.slot.clone(),
        create: false,
        failover: cfg.source.failover,
    };
    // The tables are checked one by one below, each problem on its line.
    match walbust_cdc::source::prepare(client, &spec, &[]).await {
        Ok(slot) => report.ok(format!(
            "database ready: wal_level is logical, publication {} exists, slot {} at {} (wal_status {})",
            cfg.source.publication,
            cfg.source.slot,
            walbust_pgoutput::format_lsn(slot.confirmed_flush_lsn),
            slot.wal_status
        )),
        Err(walbust_cdc::SourceError::SlotMissing { .. }) if cfg.source.create && gap_refused => {}
        Err(
            e @ (walbust_cdc::SourceError::PublicationMissing { .. } | walbust_cdc::SourceError::SlotMissing { .. }),
        ) if cfg.source.create => {
            report.note(format!("`walbust run` will create what is missing ({e})"));
        }
        Err(e) => report.error(Chain(&e).to_string()),
    }
    match walbust_cdc::source::ddl_guard_installed(client).await {
        Ok(true) => report.ok(format!(
            "DDL guard installed: a table withheld from the publication even for a moment is seen in WAL order (event trigger {})",
            walbust_cdc::window::GUARD_TRIGGER
        )),
        Ok(false) if cfg.source.create => report.warning(format!(
            "DDL guard not installed: `walbust run` installs event trigger {} if its role is a superuser; otherwise a superuser runs deploy/postgres-setup.sql. Without it, a table taken out of the publication (or renamed) and put back between two publication checks goes unseen",
            walbust_cdc::window::GUARD_TRIGGER
        )),
        Ok(false) => report.warning(format!(
            "DDL guard not installed (event trigger {}): a table taken out of the publication (or renamed) and put back between two publication checks goes unseen; a superuser installs it with deploy/postgres-setup.sql",
            walbust_cdc::window::GUARD_TRIGGER
        )),
        Err(e) => report.error(Chain(&e).to_string()),
    }
    match catalog::publication(client, &cfg.source.publication).await {
        Ok(p) => p,
        Err(e) => {
            report.error(Chain(&e).to_string());
            None
        }
    }
}

struct TableCx<'a> {
    client: &'a Client,
    rules: &'a RuleSet,
    publication: Option<&'a Publication>,
    create: bool,
}

/// How a table came to be checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Named {
    /// A rule names it exactly.
    Exactly,
    /// Only a glob matches it.
    ByGlob,
}

impl TableCx<'_> {
    async fn check_tables(&self, report: &mut Report) -> Result<(), walbust_cdc::SourceError> {
        let mut todo: Vec<(TableName, Named)> = self
            .rules
            .tables()
            .into_iter()
            .map(|t| (t, Named::Exactly))
            .collect();
        let globs = self.rules.table_patterns();
        if !globs.is_empty() {
            let all = catalog::user_tables(self.client).await?;
            for glob in &globs {
                let matched: Vec<&TableName> = all
                    .iter()
                    .filter(|t| glob.matches(&t.schema, &t.name))
                    .collect();
                if matched.is_empty() {
                    report.warning(format!(
                        "table glob {glob} ({}) matches no table",
                        self.rule_list(&self.rules_naming(glob))
                    ));
                }
                for t in matched {
                    if !todo.iter().any(|(seen, _)| seen == t) {
                        todo.push((t.clone(), Named::ByGlob));
                    }
                }
            }
        }
        for (table, named) in &todo {
            self.check_table(table, *named, report).await?;
        }
        Ok(())
    }

    /// Rules whose `table:` matches `table` (exactly or by glob).
    fn rules_for(&self, table: &TableName) -> Vec<&RuleInfo> {
        rules_for(self.rules, table)
    }

    /// Rules whose `table:` is `name` as written (a glob, say).
    fn rules_naming(&self, name: &TableName) -> Vec<&RuleInfo> {
        self.rules
            .rules()
            .iter()
            .filter(|r| parse_table(&r.table).is_ok_and(|t| &t == name))
            .collect()
    }

    /// `rule 1 (rules.yaml:4:5), rule 3 (rules.yaml:12:5)`.
    fn rule_list(&self, rules: &[&RuleInfo]) -> String {
        rule_list(self.rules, rules)
    }

    async fn check_table(
        &self,
        table: &TableName,
        named: Named,
        report: &mut Report,
    ) -> Result<(), walbust_cdc::SourceError> {
        let rules = self.rules_for(table);
        let by = self.rule_list(&rules);
        // Without the publication's column list: columns it leaves out are
        // reported with the publication's other problems, once.
        let Some(info) = catalog::table(self.client, table, None).await? else {
            report.error(format!("table {table} ({by}) does not exist"));
            return Ok(());
        };
        self.check_published(&info, named, &by, report);
        let Some((columns, unknown)) = self.bind(&info, report) else {
            return Ok(());
        };
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let Ok(Some(bound)) = self.rules.bind(&table.schema, &table.name, &names) else {
            return Ok(());
        };
        let identities: Vec<&Identity> =
            if info.kind == TableKind::Partitioned && !info.leaves.is_empty() {
                info.leaves.iter().collect()
            } else {
                vec![&info.identity]
            };

        // Old values the rules read that an identity does not send.
        let needed: Vec<&str> = bound
            .needs_old_values()
            .into_iter()
            .filter(|c| !unknown.iter().any(|u| u == c))
            .collect();
        for ident in &identities {
            let lacking: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|c| !ident.columns.iter().any(|s| s == c))
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let readers =
                old_value_readers(self.rules, table, &names, &lacking, &bound.rule_indexes());
            report.error(format!(
                "{}: replica identity {} {}, but {} {} the old values of {} on update or delete: \
                 ALTER TABLE {} REPLICA IDENTITY FULL",
                describe(&info, ident),
                ident.identity.as_sql(),
                sends(ident),
                self.rule_list(&readers),
                verb(readers.len(), "reads", "read"),
                lacking.join(", "),
                ident.table
            ));
        }

        // TOAST-able columns in templates, without FULL.
        let not_full: Vec<&&Identity> = identities
            .iter()
            .filter(|i| i.identity != ReplicaIdentity::Full)
            .collect();
        if not_full.is_empty() {
            return Ok(());
        }
        // Replica identity key columns are exempt: when one is stored out of
        // line, Postgres logs the old key with its value, so the update
        // carries it even if it did not change.
        let in_every_key =
            |name: &str| not_full.iter().all(|i| i.columns.iter().any(|c| c == name));
        for column in info
            .columns
            .iter()
            .filter(|c| c.toastable() && !in_every_key(&c.name))
        {
            let users: Vec<&RuleInfo> = rules
                .iter()
                .copied()
                .filter(|r| r.on.contains(&walbust_rules::Op::Update))
                .filter(|r| self.uses_in_template(r.index, &column.name))
                .collect();
            if users.is_empty() {
                continue;
            }
            let idents = not_full
                .iter()
                .map(|i| format!("{} on {}", i.identity.as_sql(), i.table))
                .collect::<Vec<_>>()
                .join(", ");
            let fixes = not_full
                .iter()
                .map(|i| format!("ALTER TABLE {} REPLICA IDENTITY FULL", i.table))
                .collect::<Vec<_>>()
                .join("; ");
            report.warning(format!(
                "table {table}: column {} ({}) can be TOASTed and {} {} it in a template, \
                 but the replica identity is not FULL ({idents}): an UPDATE that does not change it \
                 sends no value and the template is skipped (walbust_rule_missing_values_total); \
                 {fixes}",
                column.name,
                column.type_name,
                self.rule_list(&users),
                verb(users.len(), "uses", "use"),
            ));
        }
        Ok(())
    }

    /// Whether the table's changes reach the rules under its name.
    fn check_published(&self, info: &TableInfo, named: Named, by: &str, report: &mut Report) {
        let Some(publication) = self.publication else {
            // Missing publication: reported (or to be created) already.
            return;
        };
        let table = &info.name;
        let pub_name = &publication.name;
        if publication.tables.contains(table) {
            return;
        }
        let line = if let Some(problem) = walbust_cdc::source::partition_mismatch(publication, info)
        {
            format!("{problem} ({by})")
        } else if self.create && named == Named::Exactly {
            report.note(format!(
                "table {table} ({by}) is not in publication {pub_name}: `walbust run` will add it"
            ));
            return;
        } else {
            format!(
                "table {table} ({by}) is not in publication {pub_name}: ALTER PUBLICATION {pub_name} ADD TABLE {table}"
            )
        };
        match named {
            Named::Exactly => report.error(line),
            // A glob may match more than it means to.
            Named::ByGlob => report.warning(line),
        }
    }

    /// Binds the rules to the columns the stream sends, reporting every
    /// column a rule reads that is not among them. Returns the columns bound
    /// (unknown ones appended, so that binding succeeds) and the unknown ones.
    fn bind(&self, info: &TableInfo, report: &mut Report) -> Option<(Vec<String>, Vec<String>)> {
        let generated_sent = self.publication.is_some_and(|p| p.generated_columns);
        let mut columns: Vec<String> = info
            .sent_columns(generated_sent)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut unknown: Vec<String> = Vec::new();
        let table = &info.name;
        loop {
            let names: Vec<&str> = columns.iter().map(String::as_str).collect();
            match self.rules.bind(&table.schema, &table.name, &names) {
                Ok(_) => return Some((columns, unknown)),
                Err(e) => {
                    let name = e.column_name().to_owned();
                    if unknown.contains(&name) {
                        // Cannot happen (the column is bound now); do not loop.
                        return None;
                    }
                    let why = match info.columns.iter().find(|c| c.name == name) {
                        Some(c) if c.generated => {
                            " (it is a generated column, which the publication does not send)"
                        }
                        _ => "",
                    };
                    report.error(format!("{e}{why}"));
                    unknown.push(name.clone());
                    columns.push(name);
                }
            }
        }
    }

    /// Whether rule `index` renders `column`'s new value in a key, tag or
    /// pattern.
    fn uses_in_template(&self, index: usize, column: &str) -> bool {
        new_values_rendered(self.rules, index).contains(&column)
    }
}

/// The columns whose new value (`{col}` or `{new.col}`) rule `index`
/// renders in a key, tag or pattern, each once. Under a replica identity
/// other than FULL an UPDATE that leaves such a column alone may send it as
/// unchanged TOAST; `{old.col}` is the replica identity's business.
pub(crate) fn new_values_rendered(rules: &RuleSet, index: usize) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for (side, column) in rules.template_columns(index) {
        if matches!(side, Side::Row | Side::New) && !out.contains(&column) {
            out.push(column);
        }
    }
    out
}

/// Rules whose `table:` matches `table` (exactly or by glob).
pub(crate) fn rules_for<'r>(rules: &'r RuleSet, table: &TableName) -> Vec<&'r RuleInfo> {
    rules
        .rules()
        .iter()
        .filter(|r| parse_table(&r.table).is_ok_and(|t| t.matches(&table.schema, &table.name)))
        .collect()
}

/// `rule 1 (rules.yaml:4:5), rule 3 (rules.yaml:12:5)`.
pub(crate) fn rule_list(set: &RuleSet, rules: &[&RuleInfo]) -> String {
    rules
        .iter()
        .map(|r| {
            format!(
                "rule {} ({}:{}:{})",
                r.index + 1,
                set.origin(),
                r.line,
                r.column
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rules that read the old values of some of `lacking`, each rule
/// taken alone; all the table's update or delete rules if that fails.
pub(crate) fn old_value_readers<'r>(
    rules: &'r RuleSet,
    table: &TableName,
    columns: &[&str],
    lacking: &[&str],
    indexes: &[usize],
) -> Vec<&'r RuleInfo> {
    let all = rules.rules();
    // Per rule alone: whether it reads an old value the identity lacks.
    let alone: Option<Vec<bool>> = indexes
        .iter()
        .map(|&index| {
            let bound = rules
                .bind_only(index, &table.schema, &table.name, columns)
                .ok()??;
            Some(bound.needs_old_values().iter().any(|c| lacking.contains(c)))
        })
        .collect();
    match alone {
        Some(reads) => indexes
            .iter()
            .zip(reads)
            .filter(|(_, reads)| *reads)
            .filter_map(|(&i, _)| all.get(i))
            .collect(),
        None => indexes
            .iter()
            .filter_map(|&i| all.get(i))
            .filter(|r| {
                r.on.contains(&walbust_rules::Op::Update)
                    || r.on.contains(&walbust_rules::Op::Delete)
            })
            .collect(),
    }
}

fn verb(count: usize, one: &'static str, many: &'static str) -> &'static str {
    if count == 1 {
        one
    } else {
        many
    }
}

fn describe(info: &TableInfo, ident: &Identity) -> String {
    if ident.table == info.name {
        format!("table {}", info.name)
    } else {
        format!("partition {} of table {}", ident.table, info.name)
    }
}

/// "sends old values of id only", "sends no old values".
fn sends(ident: &Identity) -> String {
    match (ident.identity, ident.columns.is_empty()) {
        (ReplicaIdentity::Default, true) => {
            "sends no old values (the table has no primary key)".to_owned()
        }
        (_, true) => "sends no old values".to_owned(),
        (_, false) => format!("sends old values of {} only", ident.columns.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(_: &str) -> Option<String> {
        None
    }

    fn cfg(strategy: &str) -> Config {
        let text = format!(
            r#"
source: {{ url: "postgres://a@b/c", publication: p, slot: s }}
rules: r.yaml
sinks: {{ redis: {{ url: "redis://h", pattern_strategy: {strategy} }} }}
"#
        );
        Config::parse(&text, "walbust.yaml", env).unwrap()
    }

    const RULES: &str = r#"
version: 1
rules:
  - table: products
    keys: ["product:{id}"]
    patterns: ["plist:{category_id}:*", "product-list:*"]
  - table: orders
    patterns: ["*:orders:{id}", "order:{id}:*:page"]
"#;

    #[test]
    fn versioned_patterns_need_a_literal_prefix_then_one_star() {
        let rules = RuleSet::from_yaml(RULES, "rules.yaml").unwrap();
        assert_eq!(versioned_patterns(&cfg("walk"), &rules), Ok(()));
        let err = versioned_patterns(&cfg("version"), &rules).unwrap_err();
        assert!(
            err.contains("rule 2 (orders, line 7): pattern `*:orders:x`"),
            "{err}"
        );
        assert!(
            err.contains("rule 2 (orders, line 7): pattern `order:x:*:page`"),
            "{err}"
        );
        assert!(!err.contains("`plist"), "{err}");
        assert!(!err.contains("rule 1"), "{err}");
        let good = RuleSet::from_yaml(
            "version: 1\nrules:\n  - table: products\n    patterns: [\"plist:{category_id}:*\"]\n",
            "rules.yaml",
        )
        .unwrap();
        assert_eq!(versioned_patterns(&cfg("version"), &good), Ok(()));
    }

    /// Start-up, `check` and reloads all judge a rule set by `rule_problems`, which
    /// includes the version strategy's patterns.
    #[test]
    fn rule_problems_refuse_patterns_the_version_strategy_cannot_count() {
        let rules = RuleSet::from_yaml(RULES, "rules.yaml").unwrap();
        assert_eq!(rule_problems(&cfg("walk"), &rules), Ok(()));
        let err = rule_problems(&cfg("version"), &rules).unwrap_err();
        assert!(err.contains("pattern `*:orders:x`"), "{err}");
    }
}

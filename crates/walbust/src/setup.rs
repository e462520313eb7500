//! `walbust setup`: the SQL a DBA runs once so that `walbust check --db`
//! passes, printed or (with `--apply`) run.
//!
//! Map: [`script`] turns the configuration and the rules into one SQL
//! script, without I/O; [`setup`] prints it on stdout, or runs it through an
//! admin connection and prints what each statement did.
//!
//! The script is made from the configuration alone, so that it prints
//! offline, from CI or on a laptop without the production password (an
//! unset `${VAR}` reads as its name, as in `walbust check`). What depends
//! on the database as it is when the script runs (whether the role, the
//! publication, the slot exist; which columns a table's replica identity
//! sends; whether a table is partitioned) is decided by the script itself,
//! in `DO` blocks. So the same text is right whenever it runs, runs twice
//! without harm, and `--apply` runs exactly what is printed. Each `DO` block
//! says what it did with a `NOTICE` (psql shows them; `--apply` prints them).
//!
//! What the rules need is computed with the code `check --db` judges with:
//! the tables the rules name ([`RuleSet::tables`]), the old values they
//! read ([`walbust_rules::BoundTable::needs_old_values`]) and the new
//! values they render ([`crate::check::new_values_rendered`]); the script
//! compares them with each table's replica identity the way
//! [`walbust_cdc::catalog`] reads it (the primary key's columns under
//! `DEFAULT`, the index's under `USING INDEX`, all under `FULL`; for a
//! partitioned table every partition, since the partition writes the old
//! row).
//!
//! Left to the DBA, and reported by `check --db`: tables matched only by a
//! `table:` glob, and an existing publication that withholds operations,
//! rows (a row filter) or columns (a column list) the rules need.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tokio_postgres::Client;
use walbust_cdc::source::{quote_ident, redact_url};
use walbust_cdc::ConnParams;
use walbust_rules::{Op, RuleInfo, RuleSet, TableName};

use crate::check::{new_values_rendered, old_value_readers, rule_list, rules_for};
use crate::config::{Config, Unset};
use crate::{fail, fail_config};

/// Ends the script's transaction; the slot comes after it.
const COMMIT: &str = "\nCOMMIT;\n";

/// `walbust_refresh(view, invalidations)`: refreshes a materialized view and
/// emits its explicit invalidation in the same transaction.
pub const REFRESH_SQL: &str = include_str!("walbust_refresh.sql");

/// Prefix of the notices the script raises: what `--apply` prints.
const NOTICE_PREFIX: &str = "walbust setup: ";

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// The configuration file: source.url's user (the role) and database,
    /// source.publication, source.slot and source.create, and the rules'
    /// tables.
    #[arg(long, short, env = "WALBUST_CONFIG", default_value = "walbust.yaml")]
    config: PathBuf,
    /// Run the SQL instead of printing it: in one transaction, the slot
    /// after COMMIT (Postgres creates a logical slot only in a transaction
    /// that has written nothing). Prints what each step did.
    #[arg(long)]
    apply: bool,
    /// With --apply: connect with this URL, a superuser's in the database
    /// of source.url (walbust's own role can usually neither create itself
    /// nor an event trigger). Default: source.url. Its password is never
    /// printed; prefer the environment variable, since a command line
    /// shows in `ps`.
    #[arg(long, env = "WALBUST_ADMIN_URL", hide_env_values = true)]
    admin_url: Option<String>,
}

pub async fn setup(args: SetupArgs) -> ExitCode {
    // Without an admin URL, --apply connects with source.url, which must
    // then be complete. Otherwise secrets need not be set: the script holds
    // no password.
    let connects = args.apply && args.admin_url.is_none();
    let (cfg, unset, rules) = match crate::check::load(&args.config, connects) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    let target = match Target::of(&cfg) {
        Ok(t) => t,
        Err(e) => return fail_config(e),
    };
    let script = match script(&cfg, &rules, &args.config, &target, &unset) {
        Ok(s) => s,
        Err(e) => return fail_config(e),
    };
    if !args.apply {
        for u in &unset {
            eprintln!("note: {}", unset_note(u));
        }
        print!("{script}");
        return ExitCode::SUCCESS;
    }
    // A placeholder must not become a role, a database, a publication or
    // a slot.
    if let Some(u) = unset.iter().find(|u| target.mentions(&u.var)) {
        return fail_config(anyhow::anyhow!(
            "{}:{}: ${{{}}} is not set, and the setup SQL needs it (source.url's user or database, source.publication or source.slot); set it to apply",
            u.path,
            u.line,
            u.var
        ));
    }
    let url = args.admin_url.unwrap_or_else(|| cfg.source.url.clone());
    match apply(&url, &target, &script).await {
        Ok(()) => {
            println!(
                "ok: setup applied; `walbust check --db --config {}` tells whether walbust can start",
                args.config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// What the script sets up, from `source`.
pub struct Target {
    role: String,
    database: String,
    publication: String,
    slot: String,
}

impl Target {
    fn of(cfg: &Config) -> Result<Target, walbust_cdc::SourceError> {
        let conn = ConnParams::from_url(&cfg.source.url)?;
        Ok(Target {
            role: conn.user,
            database: conn.database,
            publication: cfg.source.publication.clone(),
            slot: cfg.source.slot.clone(),
        })
    }

    fn mentions(&self, text: &str) -> bool {
        [&self.role, &self.database, &self.publication, &self.slot]
            .iter()
            .any(|field| field.contains(text))
    }
}

/// The setup SQL for `cfg` and `rules` (see the module docs).
pub fn script(
    cfg: &Config,
    rules: &RuleSet,
    config_path: &Path,
    target: &Target,
    unset: &[Unset],
) -> anyhow::Result<String> {
    let Target {
        role,
        database,
        publication,
        slot,
    } = target;
    let tables = rules.tables();
    let mut out = String::new();
    let w = &mut out;

    // Header: what it is for, how to run it, what must come before it.
    writeln!(
        w,
        "-- Postgres setup for walbust, made by `walbust setup` from {} and the rules in {}.",
        config_path.display(),
        cfg.rules.display()
    )?;
    writeln!(
        w,
        "-- Role {role}, publication {publication} and slot {slot} in database {database}."
    )?;
    for u in unset {
        writeln!(w, "-- Note: {}", unset_note(u))?;
    }
    w.push_str(&format!(
        "--
-- Run it as a superuser on the primary, in database {database}, e.g.
--     psql -X -v ON_ERROR_STOP=1 -d {database} -f setup.sql
-- (not with --single-transaction: the slot is created after COMMIT), or
-- let walbust run it: walbust setup --config ... --apply --admin-url URL.
-- Every statement checks before it changes anything, so it is safe to run
-- again, after a change to the rules, say. Then `walbust check --db`
-- tells whether walbust can start.
--
-- Before it:
-- 1. postgresql.conf (needs a restart):
--      wal_level = logical
--      max_replication_slots = 10        -- at least one free for walbust
--      max_wal_senders = 10
--      max_slot_wal_keep_size = 10GB     -- cap WAL a stopped walbust can pin
-- 2. pg_hba.conf: one line for the role, from where walbust runs (here
--    10.0.0.0/8). A logical replication connection is matched by its
--    database name like a normal one; the `replication` keyword matches
--    only physical replication.
--      host  {database}  {role}  10.0.0.0/8  scram-sha-256

BEGIN;

"
    ));

    // The role.
    let role_lit = quote_literal(role);
    let role_id = quote_ident(role);
    w.push_str(&format!(
        "-- The role walbust logs in as (source.url's user): LOGIN, and
-- REPLICATION to stream from the slot. No privilege on any table: walbust
-- reads changes from the slot, and columns, replica identities and the
-- publication from the system catalogs. No password here, so that none
-- ends up in a file or a shell history: set it in psql with
-- `\\password {role}` (psql sends it hashed), and give walbust the same in
-- source.url (as a ${{VAR}}).
{}
",
        do_block(&format!(
            "BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role_lit}) THEN
        CREATE ROLE {role_id} LOGIN REPLICATION;
        RAISE NOTICE '{NOTICE_PREFIX}created role %', {role_lit};
    ELSIF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role_lit}
                      AND rolcanlogin AND (rolreplication OR rolsuper)) THEN
        ALTER ROLE {role_id} LOGIN REPLICATION;
        RAISE NOTICE '{NOTICE_PREFIX}role % may now log in and replicate', {role_lit};
    ELSE
        RAISE NOTICE '{NOTICE_PREFIX}role % exists and may log in and replicate', {role_lit};
    END IF;
END"
        ))
    ));

    // The publication.
    let pub_lit = quote_literal(publication);
    let pub_id = quote_ident(publication);
    let regclasses = format!(
        "ARRAY[{}]::regclass[]",
        tables
            .iter()
            .map(|t| quote_literal(&qualified(t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    w.push_str(&format!(
        "-- The publication, with the tables the rules name:\n{}",
        table_comments(rules, &tables)
    ));
    let globs = rules.table_patterns();
    if !globs.is_empty() {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        writeln!(
            w,
            "-- Tables matched by a glob ({}) are yours to add: `walbust check --db`\n-- names those outside the publication.",
            globs.join(", ")
        )?;
    }
    w.push_str(&format!(
        "-- Created when missing; an existing one gets the tables it lacks and keeps
-- the rest. A partitioned table's partitions must be published under its
-- name, which publish_via_partition_root does. It comes before the slot:
-- pgoutput looks the publication up as of each decoded transaction, and a
-- slot older than its publication fails on the first change.
{}
",
        do_block(&format!(
            "DECLARE
    t regclass;
    changed int := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = {pub_lit}) THEN
        CREATE PUBLICATION {pub_id};
        RAISE NOTICE '{NOTICE_PREFIX}created publication %', {pub_lit};
        changed := 1;
    END IF;
    FOREACH t IN ARRAY {regclasses} LOOP
        IF NOT EXISTS (
            SELECT FROM pg_publication p
            WHERE p.pubname = {pub_lit}
              AND (p.puballtables OR EXISTS (
                  SELECT FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = t))
        ) THEN
            EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', {pub_lit}, t);
            RAISE NOTICE '{NOTICE_PREFIX}added table % to publication %', t, {pub_lit};
            changed := changed + 1;
        END IF;
        IF (SELECT relkind FROM pg_class WHERE oid = t) = 'p' THEN
            IF NOT (SELECT pubviaroot FROM pg_publication WHERE pubname = {pub_lit}) THEN
                ALTER PUBLICATION {pub_id} SET (publish_via_partition_root = true);
                RAISE NOTICE '{NOTICE_PREFIX}publication % now publishes partitions via their root (for %)', {pub_lit}, t;
                changed := changed + 1;
            END IF;
        END IF;
    END LOOP;
    IF changed = 0 THEN
        RAISE NOTICE '{NOTICE_PREFIX}publication % has every table the rules name', {pub_lit};
    END IF;
END"
        ))
    ));

    identities(w, rules, &tables)?;

    // The DDL guard.
    w.push_str(walbust_cdc::window::GUARD_SQL);
    if !walbust_cdc::window::GUARD_SQL.ends_with('\n') {
        w.push('\n');
    }

    // The gap marker table.
    w.push_str(&format!(
        "
-- The gap marker: one row per slot walbust streamed from, copied to
-- standbys with the data, so that a gap (the slot dropped or lost, a
-- failover to a standby without it) is told without Redis. walbust writes
-- its row once per start; it needs nothing else in this database.
{}
GRANT USAGE ON SCHEMA walbust_marker TO {role_id};
GRANT SELECT, INSERT, UPDATE, DELETE ON walbust_marker.slots TO {role_id};
",
        crate::db_marker::CREATE_SQL
    ));
    // Materialized views refreshed with their invalidation.
    w.push('\n');
    w.push_str(REFRESH_SQL);
    w.push_str(COMMIT);
    w.push('\n');

    // The slot.
    if cfg.source.create {
        writeln!(
            w,
            "-- The slot: source.create is true, so walbust creates slot {slot} at its\n-- first start (and the publication, had this script not)."
        )?;
    } else {
        let slot_lit = quote_literal(slot);
        // (slot_name, plugin, temporary, twophase, failover), Postgres 17+.
        let failover = if cfg.source.failover {
            ", false, false, true"
        } else {
            ""
        };
        w.push_str(&format!(
            "-- The slot: walbust's only checkpoint; it keeps the WAL walbust has not
-- confirmed yet. Created after COMMIT (see above); creating it waits for
-- the transactions running at that moment to end.
{}",
            do_block(&format!(
                "BEGIN
    IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = {slot_lit}) THEN
        RAISE NOTICE '{NOTICE_PREFIX}slot % exists (`walbust check --db` checks its kind and state)', {slot_lit};
    ELSE
        PERFORM pg_create_logical_replication_slot({slot_lit}, 'pgoutput'{failover});
        RAISE NOTICE '{NOTICE_PREFIX}created slot %', {slot_lit};
    END IF;
END"
            ))
        ));
    }
    let slot_lit = quote_literal(slot);
    w.push_str(&format!(
        "
-- Watch it:
--   SELECT slot_name, active, wal_status, confirmed_flush_lsn,
--          pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes
--   FROM pg_replication_slots WHERE slot_name = {slot_lit};
"
    ));
    Ok(out)
}

/// `walbust.yaml:3: ${PW} is not set; read as "PW"`.
fn unset_note(u: &Unset) -> String {
    format!(
        "{}:{}: ${{{}}} is not set; read as {:?}",
        u.path, u.line, u.var, u.var
    )
}

/// `-- public.products: rule 1 (rules.yaml:36:5), rule 2 (...)`, a line a table.
fn table_comments(rules: &RuleSet, tables: &[TableName]) -> String {
    if tables.is_empty() {
        return "--   (none: no rule names a table exactly)\n".to_owned();
    }
    tables
        .iter()
        .map(|t| format!("--   {t}: {}\n", rule_list(rules, &rules_for(rules, t))))
        .collect()
}

/// What the rules of one table need its replica identity to send.
struct Needs<'r> {
    table: &'r TableName,
    /// Old values read on update or delete.
    old: Vec<&'r str>,
    /// Rules that read them.
    old_readers: Vec<&'r RuleInfo>,
    /// New values rendered on update (and not among `old`).
    new: Vec<&'r str>,
    /// Rules that render them.
    new_renderers: Vec<&'r RuleInfo>,
}

/// What the rules of `table` need of its replica identity: the error and
/// the warning of `check --db`, asked without the catalog.
fn needs<'r>(rules: &'r RuleSet, table: &'r TableName) -> anyhow::Result<Needs<'r>> {
    // Bound to the columns the rules read, the only ones that matter here,
    // where `check --db` binds to the catalog's columns.
    let read = rules.columns_read(&table.schema, &table.name);
    let bound = rules
        .bind(&table.schema, &table.name, &read)
        .with_context(|| format!("binding the rules of table {table}"))?;
    let (old, old_readers) = match &bound {
        Some(bound) => {
            let old = bound.needs_old_values();
            let readers = old_value_readers(rules, table, &read, &old, &bound.rule_indexes());
            // Borrowed from `read`, which lives only here.
            let old = read.iter().copied().filter(|c| old.contains(c)).collect();
            (old, readers)
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut new: Vec<&str> = Vec::new();
    let mut new_renderers = Vec::new();
    for rule in rules_for(rules, table) {
        if !rule.on.contains(&Op::Update) {
            continue;
        }
        let rendered: Vec<&str> = new_values_rendered(rules, rule.index)
            .into_iter()
            .filter(|c| !old.contains(c))
            .collect();
        if !rendered.is_empty() {
            new_renderers.push(rule);
        }
        for column in rendered {
            if !new.contains(&column) {
                new.push(column);
            }
        }
    }
    Ok(Needs {
        table,
        old,
        old_readers,
        new,
        new_renderers,
    })
}

/// REPLICA IDENTITY FULL where a table's identity does not send what its
/// rules need (for a partitioned table, on each partition: the partition
/// writes the old row).
fn identities(w: &mut String, rules: &RuleSet, tables: &[TableName]) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for table in tables {
        all.push(needs(rules, table)?);
    }
    let all: Vec<Needs> = all
        .into_iter()
        .filter(|n| !(n.old.is_empty() && n.new.is_empty()))
        .collect();
    if all.is_empty() {
        w.push_str("-- Replica identities: the rules read no old values; any will do.\n\n");
        return Ok(());
    }
    w.push_str(
        "-- Replica identities. On update or delete the rules read old values
-- ({col} renders both the old and the new value; `changed:` and `old:`
-- compare with the old row), and on update they render new values, which
-- an UPDATE that leaves a TOAST-able column alone does not send:\n",
    );
    for n in &all {
        let mut parts = Vec::new();
        if !n.old.is_empty() {
            parts.push(format!(
                "old {} ({})",
                n.old.join(", "),
                rule_list(rules, &n.old_readers)
            ));
        }
        if !n.new.is_empty() {
            parts.push(format!(
                "new {} ({})",
                n.new.join(", "),
                rule_list(rules, &n.new_renderers)
            ));
        }
        writeln!(w, "--   {}: {}", n.table, parts.join("; "))?;
    }
    w.push_str(
        "-- A table whose identity (its primary key, or its replica identity index)
-- leaves out one of those old values, or a TOAST-able one of those new
-- values, gets REPLICA IDENTITY FULL; a partitioned table on each partition,
-- which writes the old row.\n",
    );
    let rows: Vec<String> = all
        .iter()
        .map(|n| {
            format!(
                "        ({}, {}, {})",
                quote_literal(&qualified(n.table)),
                text_array(&n.old),
                text_array(&n.new)
            )
        })
        .collect();
    writeln!(
        w,
        "{}",
        do_block(&format!(
            "DECLARE
    need record;
    rel regclass;
    changed int;
BEGIN
    FOR need IN SELECT * FROM (VALUES
{rows}
    ) AS v(root, old_values, new_values) LOOP
        changed := 0;
        FOR rel IN
            WITH RECURSIVE tree(relid) AS (
                SELECT need.root::regclass::oid
                UNION ALL
                SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid
            )
            SELECT c.oid::regclass FROM tree JOIN pg_class c ON c.oid = tree.relid
            WHERE c.relreplident <> 'f'
              AND EXISTS (
                  SELECT FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                    AND (a.attname::text = ANY (need.old_values)
                         OR (a.attname::text = ANY (need.new_values) AND a.attstorage <> 'p'))
                    AND NOT EXISTS (
                        SELECT FROM pg_index i
                        WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey)
                          AND CASE c.relreplident
                                  WHEN 'd' THEN i.indisprimary
                                  WHEN 'i' THEN i.indisreplident
                                  ELSE false
                              END))
        LOOP
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
            RAISE NOTICE '{NOTICE_PREFIX}table % now has REPLICA IDENTITY FULL', rel;
            changed := changed + 1;
        END LOOP;
        IF changed = 0 THEN
            RAISE NOTICE '{NOTICE_PREFIX}the replica identity of % sends what the rules need', need.root::regclass;
        END IF;
    END LOOP;
END",
            rows = rows.join(",\n")
        ))
    )?;
    Ok(())
}

/// `DO $walbust$ ... $walbust$;` with a tag that `body` does not contain.
fn do_block(body: &str) -> String {
    let mut tag = "$walbust$".to_owned();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$walbust{n}$");
    }
    format!("DO {tag}\n{body}\n{tag};\n")
}

/// `"schema"."table"`.
fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// An SQL string literal (standard_conforming_strings, on since 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `ARRAY['a', 'b']::text[]`.
fn text_array(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| quote_literal(i)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// Runs `script` through a connection with `url`, printing the script's
/// notices as it goes.
async fn apply(url: &str, target: &Target, script: &str) -> anyhow::Result<()> {
    let shown = redact_url(url);
    let (client, mut notices) = walbust_cdc::source::connect_with_notices(url)
        .await
        .with_context(|| format!("connecting to {shown}"))?;
    let row = client
        .query_one("SELECT current_database()::text, current_user::text", &[])
        .await
        .context("asking the server who we are")?;
    let (database, user): (String, String) = (row.get(0), row.get(1));
    // Set up elsewhere, the publication and the slot would be useless.
    if database != target.database {
        anyhow::bail!(
            "{shown} connects to database {database}, but source.url reads {}: the publication and the slot belong there",
            target.database
        );
    }
    println!("connected to database {database} as {user}");
    // The script as printed, in two simple queries, so that a failure is
    // told for what it is: BEGIN ... COMMIT, then the slot.
    let (transaction, after) = script.split_once(COMMIT).unwrap_or((script, ""));
    let transaction = format!("{transaction}{COMMIT}");
    // What the transaction did counts only once it committed.
    let done = run(&client, &mut notices, &transaction)
        .await
        .context("running the setup SQL; rolled back, nothing changed")?;
    print_done(&done);
    println!(
        "done: DDL guard installed (event trigger {})",
        walbust_cdc::window::GUARD_TRIGGER
    );
    let done = run(&client, &mut notices, after).await.context(
        "running the setup SQL after COMMIT (the role, publication, replica identities and DDL guard are in place)",
    )?;
    print_done(&done);
    Ok(())
}

/// Runs `sql`; returns what its notices say it did.
async fn run(
    client: &Client,
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    client.batch_execute(sql).await?;
    let mut done = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        if let Some(what) = notice.strip_prefix(NOTICE_PREFIX) {
            done.push(what.to_owned());
        }
    }
    Ok(done)
}

fn print_done(done: &[String]) {
    for what in done {
        println!("done: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn do_blocks_pick_a_tag_the_body_lacks() {
        assert!(do_block("SELECT 1;").starts_with("DO $walbust$\n"));
        assert!(do_block("SELECT '$walbust$';").starts_with("DO $walbust1$\n"));
    }

    #[test]
    fn literals_and_arrays_are_quoted() {
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
        assert_eq!(text_array(&["a", "b'"]), "ARRAY['a', 'b''']::text[]");
        assert_eq!(text_array(&[]), "ARRAY[]::text[]");
        assert_eq!(
            qualified(&TableName::new("public", "Odd\"Name")),
            "\"public\".\"Odd\"\"Name\""
        );
    }
}

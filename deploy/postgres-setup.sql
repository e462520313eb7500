-- Postgres setup for walbust. Run as a superuser on the primary, in the
-- database walbust reads (here `shop`, with the tables of
-- deploy/shop-schema.sql): it fits the rules in rules.yaml, which
-- deploy/compose.yaml mounts, and `walbust check --db` passes after it.
--
-- 1. postgresql.conf (needs a restart):
--      wal_level = logical
--      max_replication_slots = 10        -- at least one free for walbust
--      max_wal_senders = 10
--      max_slot_wal_keep_size = 10GB     -- cap WAL a stopped walbust can pin
-- 2. pg_hba.conf: one line for the database. A logical replication
--    connection is matched by its database name like a normal one; the
--    `replication` keyword matches only physical replication.
--      host  shop  walbust  10.0.0.0/8  scram-sha-256

-- A least-privilege role: REPLICATION to stream. No privilege on the
-- tables: walbust reads their changes from the slot and their columns,
-- replica identities and publication from the system catalogs, never the
-- tables themselves (`walbust check --db` included).
CREATE ROLE walbust WITH LOGIN REPLICATION PASSWORD 'change-me';

-- The publication names the tables the rules read. Publishing via the
-- partition root lets a rule on a partitioned table see every partition.
CREATE PUBLICATION walbust
    FOR TABLE public.products, public.categories, public.orders, public.users
    WITH (publish_via_partition_root = true);

-- Rules that read old values on update or delete need the whole old row:
-- on update, {col} invalidates both the old and the new value (a product
-- moved between categories, a renamed slug, a changed e-mail address), and
-- `when: { changed: [...] }` and `old:` conditions compare with the old row.
-- Every table of rules.yaml does so.
ALTER TABLE public.products REPLICA IDENTITY FULL;
ALTER TABLE public.categories REPLICA IDENTITY FULL;
ALTER TABLE public.orders REPLICA IDENTITY FULL;
ALTER TABLE public.users REPLICA IDENTITY FULL;

-- BEGIN DDL guard (the same text as `walbust_cdc::window::GUARD_SQL`)
-- walbust's DDL guard: after every statement that can change what a
-- publication sends (membership, published operations, table and schema
-- names), emit a transactional logical message with every publication's
-- state as that transaction sees it. walbust reads it in WAL order and so
-- knows of a table withheld even for a moment; see `walbust check --db`.
-- Needs a superuser; safe to run again.
-- Its own schema: a schema named like a role (walbust) would capture
-- that role's unqualified table names ("$user" in search_path).
CREATE SCHEMA IF NOT EXISTS walbust_guard;

CREATE OR REPLACE FUNCTION walbust_guard.ddl_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $guard$
BEGIN
    IF current_setting('wal_level') <> 'logical' THEN
        RETURN;
    END IF;
    PERFORM pg_logical_emit_message(true, 'walbust.ddl', json_build_object(
        'v', 1,
        'command', tg_tag,
        'publications', coalesce((
            SELECT json_agg(json_build_object(
                'name', p.pubname,
                'insert', p.pubinsert,
                'update', p.pubupdate,
                'delete', p.pubdelete,
                'truncate', p.pubtruncate,
                'tables', coalesce((
                    SELECT json_agg(json_build_array(t.schemaname, t.tablename))
                    FROM pg_publication_tables t
                    WHERE t.pubname = p.pubname), '[]'::json)))
            FROM pg_publication p), '[]'::json))::text);
END
$guard$;

DROP EVENT TRIGGER IF EXISTS walbust_ddl_guard;
CREATE EVENT TRIGGER walbust_ddl_guard ON ddl_command_end
    WHEN TAG IN ('ALTER PUBLICATION', 'CREATE PUBLICATION', 'DROP PUBLICATION',
                 'ALTER TABLE', 'DROP TABLE', 'ALTER SCHEMA', 'DROP SCHEMA')
    EXECUTE FUNCTION walbust_guard.ddl_guard();
-- END DDL guard

-- The gap marker: one row per slot walbust streamed from, copied to
-- standbys with the data, so that a gap (the slot dropped or lost, a
-- failover to a standby without it) is told without Redis.
CREATE SCHEMA IF NOT EXISTS walbust_marker;
CREATE TABLE IF NOT EXISTS walbust_marker.slots (
    slot name PRIMARY KEY,
    system_identifier text NOT NULL,
    first_streamed timestamptz NOT NULL DEFAULT now(),
    last_started timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA walbust_marker TO walbust;
GRANT SELECT, INSERT, UPDATE, DELETE ON walbust_marker.slots TO walbust;

-- BEGIN walbust_refresh (the same text as crates/walbust/src/walbust_refresh.sql,
-- which `walbust setup` installs)
-- walbust_refresh(view, invalidations): refreshes a materialized view and
-- invalidates its caches in the same transaction, so that the cache is
-- purged exactly when the new content becomes visible (walbust publishes
-- the invalidation when the transaction commits, never before).
--
--   SELECT walbust_refresh('risk_overview', '{"keys":["dashboard:overview"]}');
--
-- CONCURRENTLY (readers keep reading the old content meanwhile) when the
-- view is populated and has a unique index without a WHERE clause or
-- expressions, as Postgres requires; a plain REFRESH otherwise. Returns
-- whether it refreshed concurrently. `invalidations` is an explicit
-- invalidation message (keys, tags, patterns: arrays of non-empty strings),
-- checked here so a typo fails the call instead of being refused by walbust
-- after the commit; walbust's `explicit:` policy still applies (a pattern
-- matching every key needs explicit.allow_flush_all, and explicit.enabled:
-- false ignores the message). Runs with the caller's rights: the caller
-- must own the view, as for REFRESH itself. Safe to run again.
CREATE OR REPLACE FUNCTION public.walbust_refresh(view regclass, invalidations jsonb)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $walbust_refresh$
DECLARE
    populated boolean;
    concurrent boolean;
    field text;
BEGIN
    SELECT c.relispopulated INTO populated
    FROM pg_class c WHERE c.oid = walbust_refresh.view AND c.relkind = 'm';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'walbust_refresh: % is not a materialized view', walbust_refresh.view;
    END IF;
    IF jsonb_typeof(invalidations) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'walbust_refresh: invalidations must be a JSON object of keys, tags and patterns';
    END IF;
    FOR field IN SELECT jsonb_object_keys(invalidations) LOOP
        IF field NOT IN ('keys', 'tags', 'patterns') THEN
            RAISE EXCEPTION 'walbust_refresh: unknown field "%" (keys, tags, patterns)', field;
        END IF;
        IF jsonb_typeof(invalidations -> field) <> 'array' OR EXISTS (
            SELECT FROM jsonb_array_elements(invalidations -> field) e
            WHERE jsonb_typeof(e) <> 'string' OR e #>> '{}' = ''
        ) THEN
            RAISE EXCEPTION 'walbust_refresh: % must be an array of non-empty strings', field;
        END IF;
    END LOOP;
    concurrent := populated AND EXISTS (
        SELECT FROM pg_index i
        WHERE i.indrelid = walbust_refresh.view AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL
    );
    IF concurrent THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %s', walbust_refresh.view);
    ELSE
        EXECUTE format('REFRESH MATERIALIZED VIEW %s', walbust_refresh.view);
    END IF;
    PERFORM pg_logical_emit_message(true, 'walbust', invalidations::text);
    RETURN concurrent;
END
$walbust_refresh$;
-- END walbust_refresh

-- The slot: walbust's only checkpoint. Or set source.create: true.
SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');

-- Watch it:
--   SELECT slot_name, active, wal_status, confirmed_flush_lsn,
--          pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes
--   FROM pg_replication_slots WHERE slot_name = 'walbust';

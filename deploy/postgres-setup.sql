-- Postgres setup for walbust. Run as a superuser on the primary.
--
-- 1. postgresql.conf (needs a restart):
--      wal_level = logical
--      max_replication_slots = 10        -- at least one free for walbust
--      max_wal_senders = 10
--      max_slot_wal_keep_size = 10GB     -- cap WAL a stopped walbust can pin
-- 2. pg_hba.conf: allow the role both a normal and a replication connection:
--      host  shop         walbust  10.0.0.0/8  scram-sha-256
--      host  replication  walbust  10.0.0.0/8  scram-sha-256

-- A least-privilege role: REPLICATION to stream, SELECT only for
-- `walbust check --db` (catalog checks of columns and replica identity).
CREATE ROLE walbust WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO walbust;
GRANT SELECT ON public.products, public.categories, public.orders TO walbust;

-- The publication names the tables the rules read. Publishing via the
-- partition root lets a rule on a partitioned table see every partition.
CREATE PUBLICATION walbust
    FOR TABLE public.products, public.categories, public.orders
    WITH (publish_via_partition_root = true);

-- Rules that read old values on update (a row moving between categories,
-- `when: { changed: [...] }`) need the whole old row:
ALTER TABLE public.products REPLICA IDENTITY FULL;

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

-- The slot: walbust's only checkpoint. Or set source.create: true.
SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');

-- Watch it:
--   SELECT slot_name, active, wal_status, confirmed_flush_lsn,
--          pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes
--   FROM pg_replication_slots WHERE slot_name = 'walbust';

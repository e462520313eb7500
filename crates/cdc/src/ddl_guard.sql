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

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

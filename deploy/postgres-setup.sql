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

-- The slot: walbust's only checkpoint. Or set source.create: true.
SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');

-- Watch it:
--   SELECT slot_name, active, wal_status, confirmed_flush_lsn,
--          pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes
--   FROM pg_replication_slots WHERE slot_name = 'walbust';

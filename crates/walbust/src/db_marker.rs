//! The gap marker's copy in the database itself.
//!
//! The Redis marker ([`crate::gap`]) lives beside the cache: a walbust with
//! Kafka only has none, and a Redis that evicted or lost it forgets that
//! walbust ever ran. A row in the source database does not depend on a
//! sink, and it travels with the data: physical replication copies it to
//! every standby, so after a failover to a standby that does not hold the
//! slot, the row is there and the slot is not, which is exactly a gap.
//!
//! The row is written once per start, after the slot is ready, into the
//! table [`TABLE`] (schema `walbust_marker`: a schema named like the role,
//! `walbust`, would capture that role's unqualified names through
//! `"$user"` in search_path; created by `walbust setup`, or by
//! walbust itself with `source.create: true`). Without the table walbust
//! warns and relies on the Redis marker alone.
//!
//! What it can tell, and what it cannot:
//!
//! | after | row | slot | verdict |
//! |---|---|---|---|
//! | a failover to a standby without the slot (any sink) | copied | missing | gap |
//! | the slot dropped or lost | kept | missing | gap |
//! | a failover that kept the slot (failover slots, Postgres 17+) | copied | present | continuous |
//! | a restore of an older backup that has the row | restored | missing | gap |
//! | the slot dropped and made again under the same name | kept | present | not seen here (the Redis marker's positions see it) |
//! | a new server built from a dump | absent | any | first start |
//!
//! Physical standbys share the primary's system identifier, so the
//! identifier does not tell them apart; the slot's presence does.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::gap::Verdict;

/// The marker table: one row per slot walbust has streamed from.
pub const TABLE: &str = "walbust_marker.slots";

/// Creates the schema and the table (idempotent), as `walbust setup` and
/// `source.create: true` do.
pub const CREATE_SQL: &str = "CREATE SCHEMA IF NOT EXISTS walbust_marker;
CREATE TABLE IF NOT EXISTS walbust_marker.slots (
    slot name PRIMARY KEY,
    system_identifier text NOT NULL,
    first_streamed timestamptz NOT NULL DEFAULT now(),
    last_started timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE walbust_marker.slots IS 'walbust: the slots it streamed from, to tell a gap (slot gone, failover) from a first start';";

/// What the database says about `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbMarker {
    /// No marker table: nothing recorded, nothing to tell.
    NoTable,
    /// The table, without a row for the slot: a first start.
    NoRow,
    /// walbust streamed the slot before, first at `first_streamed`.
    Streamed { first_streamed: String },
}

/// Whether the marker table exists; creates it when missing and `create`.
pub async fn ensure(client: &Client, create: bool) -> Result<bool> {
    if table_exists(client)
        .await
        .context("could not look up the gap marker table")?
    {
        return Ok(true);
    }
    if !create {
        return Ok(false);
    }
    client
        .batch_execute(CREATE_SQL)
        .await
        .with_context(|| format!("could not create the gap marker table {TABLE}"))?;
    tracing::info!(table = TABLE, "created the gap marker table");
    Ok(true)
}

async fn table_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('walbust_marker.slots') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Reads the marker of `slot`.
pub async fn read(client: &Client, slot: &str) -> Result<DbMarker, tokio_postgres::Error> {
    if !table_exists(client).await? {
        return Ok(DbMarker::NoTable);
    }
    let row = client
        .query_opt(
            "SELECT to_char(first_streamed AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' \
             FROM walbust_marker.slots WHERE slot = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        Some(row) => DbMarker::Streamed {
            first_streamed: row.get(0),
        },
        None => DbMarker::NoRow,
    })
}

/// The verdict on `marker` for a slot that exists or not.
pub fn judge(marker: &DbMarker, slot_exists: bool) -> Verdict {
    match marker {
        DbMarker::Streamed { first_streamed } if !slot_exists => Verdict::Gap(format!(
            "the database records that walbust streamed this slot since {first_streamed}, and the slot is not on this server: it was dropped or lost, or this is a standby promoted without it"
        )),
        _ => Verdict::Continuous,
    }
}

/// Records that walbust streams `slot` on the server of `system`.
pub async fn write(client: &Client, slot: &str, system: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO walbust_marker.slots (slot, system_identifier) VALUES ($1, $2) \
             ON CONFLICT (slot) DO UPDATE SET system_identifier = EXCLUDED.system_identifier, \
             last_started = now()",
            &[&slot, &system],
        )
        .await
        .context("could not write the gap marker table")?;
    Ok(())
}

/// Forgets `slot` (after a purge stood in for what it guarded).
pub async fn remove(client: &Client, slot: &str) -> Result<()> {
    if !table_exists(client)
        .await
        .context("could not look up the gap marker table")?
    {
        return Ok(());
    }
    client
        .execute("DELETE FROM walbust_marker.slots WHERE slot = $1", &[&slot])
        .await
        .context("could not clear the gap marker table")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_slot_that_is_gone_is_a_gap() {
        let streamed = DbMarker::Streamed {
            first_streamed: "2026-12-04 10:00:00 UTC".into(),
        };
        assert!(matches!(judge(&streamed, false), Verdict::Gap(why) if why.contains("2026-12-04")));
        assert_eq!(judge(&streamed, true), Verdict::Continuous);
        assert_eq!(judge(&DbMarker::NoRow, false), Verdict::Continuous);
        assert_eq!(judge(&DbMarker::NoTable, false), Verdict::Continuous);
    }
}

//! Read-only catalog queries: what `walbust check --db` needs to know about
//! the tables the rules name, the publication, and each table's replica
//! identity.
//!
//! Nothing here decides whether something is a problem; it reports the
//! catalog as the replication stream will see it:
//!
//! - [`publication`]: whether it publishes via the partition root, which
//!   tables it covers (as `pg_publication_tables` lists them: the root of a
//!   partitioned table with `publish_via_partition_root`, its leaf
//!   partitions without), the operations it publishes, row filters, column
//!   lists and generated columns.
//! - [`table`]: kind (table, partitioned, partition), columns with their
//!   storage (TOAST-able or not), replica identity and the columns it sends,
//!   and for a partitioned table its leaf partitions, whose identities are
//!   the ones that decide what an old tuple holds.
//! - [`user_tables`]: every ordinary and partitioned table, for matching
//!   table globs.
//!
//! Queries stick to catalogs that exist since Postgres 10; features of later
//! versions (generated columns, publication row filters and column lists)
//! are asked for only when the server has them.

use std::collections::BTreeSet;

use tokio_postgres::Client;
use walbust_rules::{Op, TableName};

use crate::error::SourceError;

/// A publication as the replication stream sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub name: String,
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// `publish_via_partition_root` (always false before Postgres 13).
    pub via_root: bool,
    /// Generated columns are published (`publish_generated_columns = stored`,
    /// Postgres 18).
    pub generated_columns: bool,
    /// Tables whose changes are published under their own name.
    pub tables: BTreeSet<TableName>,
    /// The operations it publishes (`publish = '...'`), in [`Op::ALL`] order.
    pub ops: Vec<Op>,
    /// Tables it publishes with a row filter or a column list (Postgres 15).
    pub filters: Vec<TableFilter>,
}

/// A table a publication publishes with a row filter or a column list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    pub table: TableName,
    /// The row filter (`WHERE (...)`) as Postgres prints it.
    pub row_filter: Option<String>,
    /// The column list: only these columns are sent.
    pub column_list: Option<Vec<String>>,
    /// Every column of the table, dropped ones left out.
    pub columns: Vec<String>,
}

/// `pg_class.relreplident`: which old values an UPDATE or DELETE sends.
pub use walbust_pgoutput::ReplicaIdentity;

/// What kind of relation a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// An ordinary table that is not a partition.
    Table,
    /// A partitioned table (its rows live in partitions).
    Partitioned,
    /// A partition of a partitioned table (possibly itself partitioned).
    Partition,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type`: `text`, `character varying(20)`, ...
    pub type_name: String,
    /// `attstorage`: `p` (plain) never goes to TOAST; `e`, `m`, `x` may.
    pub storage: char,
    /// A generated column, which logical replication does not send unless
    /// the publication says so.
    pub generated: bool,
}

impl Column {
    /// Whether an UPDATE that leaves this column alone may send it as
    /// "unchanged TOAST" instead of its value.
    pub fn toastable(&self) -> bool {
        self.storage != 'p'
    }
}

/// The replica identity of one relation, with the columns it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub table: TableName,
    pub identity: ReplicaIdentity,
    /// Columns whose old values are sent (every column under `FULL`).
    pub columns: Vec<String>,
}

/// A table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: TableName,
    pub kind: TableKind,
    /// Columns in order, dropped ones left out.
    pub columns: Vec<Column>,
    /// The table's own replica identity.
    pub identity: Identity,
    /// For a partitioned table: every leaf partition's identity (the leaf
    /// writes the old tuple). Empty otherwise.
    pub leaves: Vec<Identity>,
    /// For a partition: its ancestors, nearest first.
    pub ancestors: Vec<TableName>,
    /// The publication's column list for this table, when it has one
    /// (Postgres 15): only these columns are sent.
    pub column_list: Option<Vec<String>>,
}

impl TableInfo {
    /// The columns the replication stream sends for this table, in order:
    /// generated columns only when the publication publishes them
    /// (`generated_published`), and only those of the publication's column
    /// list when it has one.
    pub fn sent_columns(&self, generated_published: bool) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| !c.generated || generated_published)
            .filter(|c| {
                self.column_list
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|l| l == &c.name))
            })
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// The server's `server_version_num` (150004 for 15.4).
pub async fn server_version(client: &Client) -> Result<i32, SourceError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| SourceError::query("read server_version_num", e))?;
    Ok(row.get(0))
}

/// The publication named `name`, or `None` when it does not exist.
pub async fn publication(client: &Client, name: &str) -> Result<Option<Publication>, SourceError> {
    // `to_jsonb(p)` reads columns that older servers lack as NULL instead
    // of failing on them. Postgres 10 has no `pubtruncate` and sends no
    // truncates at all; reading it as published keeps such a server
    // accepted as before.
    let row = client
        .query_opt(
            "SELECT p.puballtables, \
                    coalesce((to_jsonb(p) ->> 'pubviaroot')::bool, false), \
                    coalesce(to_jsonb(p) ->> 'pubgencols', 'n') = 's', \
                    p.pubinsert, p.pubupdate, p.pubdelete, \
                    coalesce((to_jsonb(p) ->> 'pubtruncate')::bool, true) \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| SourceError::query("look up the publication", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let tables = crate::source::published_tables(client, name)
        .await?
        .into_iter()
        .map(|(schema, table)| TableName::new(schema, table))
        .collect();
    let ops = Op::ALL
        .into_iter()
        .zip(3..)
        .filter(|(_, i)| row.get::<_, bool>(*i))
        .map(|(op, _)| op)
        .collect();
    let filters = if server_version(client).await? >= 150_000 {
        filters(client, name).await?
    } else {
        Vec::new()
    };
    Ok(Some(Publication {
        name: name.to_owned(),
        all_tables: row.get(0),
        via_root: row.get(1),
        generated_columns: row.get(2),
        tables,
        ops,
        filters,
    }))
}

/// Row filters and column lists of publication `name` (Postgres 15).
async fn filters(client: &Client, name: &str) -> Result<Vec<TableFilter>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_get_expr(pr.prqual, pr.prrelid), \
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                     WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)), \
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                     WHERE a.attrelid = pr.prrelid AND a.attnum > 0 AND NOT a.attisdropped) \
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL) \
             ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(|e| {
            SourceError::query("read the publication's row filters and column lists", e)
        })?;
    Ok(rows
        .iter()
        .map(|r| TableFilter {
            table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            row_filter: r.get(2),
            column_list: r.get(3),
            columns: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
        })
        .collect())
}

/// Every ordinary and partitioned table outside the system schemas.
pub async fn user_tables(client: &Client) -> Result<Vec<TableName>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("list tables", e))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The table `name` (ordinary or partitioned), or `None` when there is no
/// such table. `publication` is used for its column list, if any.
pub async fn table(
    client: &Client,
    name: &TableName,
    publication: Option<&str>,
) -> Result<Option<TableInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relispartition, c.relreplident::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(|e| SourceError::query("look up a table", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let is_partition: bool = row.get(2);
    let replident: String = row.get(3);
    let version = server_version(client).await?;

    let kind = if is_partition {
        TableKind::Partition
    } else if relkind == "p" {
        TableKind::Partitioned
    } else {
        TableKind::Table
    };
    let columns = columns(client, oid, version).await?;
    let identity = identity(client, oid, name.clone(), &replident, &columns).await?;
    let leaves = if relkind == "p" {
        leaves(client, oid, version).await?
    } else {
        Vec::new()
    };
    let ancestors = if is_partition {
        ancestors(client, oid).await?
    } else {
        Vec::new()
    };
    let column_list = match publication {
        Some(p) if version >= 150_000 => column_list(client, oid, p).await?,
        _ => None,
    };
    Ok(Some(TableInfo {
        name: name.clone(),
        kind,
        columns,
        identity,
        leaves,
        ancestors,
        column_list,
    }))
}

async fn columns(client: &Client, oid: u32, version: i32) -> Result<Vec<Column>, SourceError> {
    let generated = if version >= 120_000 {
        "a.attgenerated <> ''"
    } else {
        "false"
    };
    let sql = format!(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attstorage::text, {generated} \
         FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum"
    );
    let rows = client
        .query(&sql, &[&oid])
        .await
        .map_err(|e| SourceError::query("list a table's columns", e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            storage: r.get::<_, String>(2).chars().next().unwrap_or('p'),
            generated: r.get(3),
        })
        .collect())
}

/// The identity of relation `oid` and the columns it sends.
async fn identity(
    client: &Client,
    oid: u32,
    table: TableName,
    code: &str,
    all_columns: &[Column],
) -> Result<Identity, SourceError> {
    // The catalog holds one of the four codes; an unknown one would be a
    // newer server's, read as the default (the primary key's columns).
    let identity = code
        .bytes()
        .next()
        .and_then(ReplicaIdentity::from_byte)
        .unwrap_or(ReplicaIdentity::Default);
    let columns = match identity {
        ReplicaIdentity::Full => all_columns.iter().map(|c| c.name.clone()).collect(),
        ReplicaIdentity::Nothing => Vec::new(),
        ReplicaIdentity::Default | ReplicaIdentity::Index => {
            let rows = client
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                     WHERE i.indrelid = $1 AND (CASE WHEN $2 THEN i.indisprimary ELSE i.indisreplident END) \
                     ORDER BY a.attnum",
                    &[&oid, &(identity == ReplicaIdentity::Default)],
                )
                .await
                .map_err(|e| SourceError::query("read a table's replica identity", e))?;
            rows.iter().map(|r| r.get(0)).collect()
        }
    };
    Ok(Identity {
        table,
        identity,
        columns,
    })
}

/// Leaf partitions of partitioned table `oid`, at any depth.
async fn leaves(client: &Client, oid: u32, version: i32) -> Result<Vec<Identity>, SourceError> {
    let rows = client
        .query(
            "WITH RECURSIVE tree(relid) AS ( \
                 SELECT $1::oid \
                 UNION ALL \
                 SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid \
             ) \
             SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text \
             FROM tree t JOIN pg_class c ON c.oid = t.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relispartition \
             ORDER BY 2, 3",
            &[&oid],
        )
        .await
        .map_err(|e| SourceError::query("list a table's partitions", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let leaf_oid: u32 = r.get(0);
        let name = TableName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let code: String = r.get(3);
        let cols = columns(client, leaf_oid, version).await?;
        out.push(identity(client, leaf_oid, name, &code, &cols).await?);
    }
    Ok(out)
}

/// Ancestors of partition `oid`, nearest first.
async fn ancestors(client: &Client, oid: u32) -> Result<Vec<TableName>, SourceError> {
    let rows = client
        .query(
            "WITH RECURSIVE up(relid, depth) AS ( \
                 SELECT i.inhparent, 1 FROM pg_inherits i WHERE i.inhrelid = $1 \
                 UNION ALL \
                 SELECT i.inhparent, u.depth + 1 FROM pg_inherits i JOIN up u ON i.inhrelid = u.relid \
             ) \
             SELECT n.nspname::text, c.relname::text FROM up u \
             JOIN pg_class c ON c.oid = u.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY u.depth",
            &[&oid],
        )
        .await
        .map_err(|e| SourceError::query("list a partition's ancestors", e))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The publication's column list for relation `oid` (Postgres 15), if it
/// names one.
async fn column_list(
    client: &Client,
    oid: u32,
    publication: &str,
) -> Result<Option<Vec<String>>, SourceError> {
    let row = client
        .query_opt(
            "SELECT (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                     WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)) \
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid = $2 AND pr.prattrs IS NOT NULL",
            &[&publication, &oid],
        )
        .await
        .map_err(|e| SourceError::query("read the publication's column list", e))?;
    Ok(row.and_then(|r| r.get::<_, Option<Vec<String>>>(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_codes() {
        assert_eq!(
            ReplicaIdentity::from_byte(b'i'),
            Some(ReplicaIdentity::Index)
        );
        assert_eq!(ReplicaIdentity::Index.as_sql(), "USING INDEX");
    }

    #[test]
    fn plain_storage_is_not_toastable() {
        let col = |storage| Column {
            name: "c".into(),
            type_name: "t".into(),
            storage,
            generated: false,
        };
        assert!(!col('p').toastable());
        for s in ['x', 'e', 'm'] {
            assert!(col(s).toastable());
        }
    }
}

//! The workload: sequenced writes to `seq (id bigint primary key, n int)`,
//! each change recorded in the ledger before it is sent and settled when
//! Postgres answers.
//!
//! Mix: single-row inserts, multi-row transactions (inserts plus an
//! update), single-row updates and deletes, and rolled-back transactions,
//! whose changes must never be invalidated. Ids are never reused and every
//! update sets `n` to the next value of one run-wide counter, so no change
//! is ever attempted twice, even after an attempt that did not commit: each
//! has its own tag, and a rolled-back attempt's tag must stay unseen. A change whose answer is lost (the connection died) is *uncertain*;
//! its row is left alone until [`resolve`] reads it back after recovery.
//!
//! Rows `1..=large_rows` belong to the large UPDATE ([`large_update`]),
//! which sets `n` on all of them in one transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::ledger::{ChangeId, ChangeIx, Ledger};
use crate::observe::lock;
use crate::plan::Rng;

/// Time allowed for one statement or transaction of the writer.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for the large UPDATE.
const LARGE_TIMEOUT: Duration = Duration::from_secs(300);

/// The writer's model of the table.
#[derive(Debug)]
pub struct Model {
    pub next_id: i64,
    /// Rows the writer may update or delete, with their current `n`.
    pub live: Vec<(i64, i32)>,
    /// Rows whose last change is uncertain: not touched until resolved.
    pub in_doubt: Vec<i64>,
    /// The `n` of the next update (any row): values are never reused.
    pub next_n: i32,
    /// Rows `1..=large_rows`, changed only by the large UPDATE.
    pub large_rows: i64,
}

impl Model {
    pub fn new(large_rows: i64) -> Model {
        Model {
            next_id: large_rows + 1,
            live: Vec::new(),
            in_doubt: Vec::new(),
            next_n: 1,
            large_rows,
        }
    }
}

/// Shared state of the workload.
pub struct Workload {
    pub ledger: Arc<Mutex<Ledger>>,
    pub model: Mutex<Model>,
    /// The cycle changes are written in.
    pub cycle: AtomicU32,
    /// Transactions the writer attempted.
    pub transactions: AtomicU64,
}

impl Workload {
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, ids: &[ChangeId]) -> Vec<ChangeIx> {
        let cycle = self.cycle.load(Ordering::Acquire);
        let mut l = lock(&self.ledger);
        ids.iter().map(|&id| l.register(id, cycle)).collect()
    }

    fn settle(&self, ixs: &[ChangeIx], outcome: Outcome) {
        let mut l = lock(&self.ledger);
        for &ix in ixs {
            match outcome {
                Outcome::Committed(at) => l.committed(ix, Some(at)),
                Outcome::RolledBack => l.not_committed(ix),
                Outcome::Unknown => l.uncertain(ix),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Committed(Instant),
    RolledBack,
    Unknown,
}

/// A writer's connection source: connects a new client.
pub type Connect = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Client>> + Send>>
        + Send
        + Sync,
>;

/// Writes until `stop`, about `rate` transactions a second, one at a time.
/// Each transaction holds `gate`: whoever holds it instead pauses the
/// writer between two transactions.
pub async fn write(
    work: Arc<Workload>,
    connect: Connect,
    gate: Arc<tokio::sync::Mutex<()>>,
    rate: u32,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let mut rng = Rng::new(seed);
    let interval = Duration::from_secs(1) / rate.max(1);
    let mut client: Option<Client> = None;
    while !*stop.borrow() {
        let guard = gate.lock().await;
        if *stop.borrow() {
            break;
        }
        let c = match client.as_ref() {
            Some(c) => c,
            None => {
                match tokio::time::timeout(Duration::from_secs(3), connect()).await {
                    Ok(Ok(c)) => client = Some(c),
                    // Postgres is down: no transaction can be attempted.
                    _ => {
                        drop(guard);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
        };
        work.transactions.fetch_add(1, Ordering::Relaxed);
        if !one_transaction(&work, c, &mut rng).await {
            client = None;
        }
        drop(guard);
        tokio::time::sleep(interval).await;
    }
}

/// One transaction of the mix; `false` when the connection must be dropped.
async fn one_transaction(work: &Workload, client: &Client, rng: &mut Rng) -> bool {
    match rng.below(100) {
        roll @ 70..=91 => match pick_live(work, rng) {
            Some((id, _)) if roll <= 84 => update(work, client, id).await,
            Some((id, _)) => delete(work, client, id).await,
            None => insert(work, client).await,
        },
        92..=95 => multi(work, client, rng).await,
        96..=99 => rolled_back(work, client, rng).await,
        _ => insert(work, client).await,
    }
}

/// Takes a random live row out of the model (the caller puts it back).
fn pick_live(work: &Workload, rng: &mut Rng) -> Option<(i64, i32)> {
    let mut m = work.model();
    if m.live.is_empty() {
        return None;
    }
    let i = rng.index(m.live.len());
    Some(m.live.swap_remove(i))
}

fn fresh_n(work: &Workload) -> i32 {
    let mut m = work.model();
    let n = m.next_n;
    m.next_n += 1;
    n
}

/// Ids never used before.
pub fn fresh_ids(work: &Workload, n: usize) -> Vec<i64> {
    let mut m = work.model();
    let first = m.next_id;
    m.next_id += n as i64;
    (first..first + n as i64).collect()
}

/// Runs `fut` with the statement timeout; `None` on error or timeout.
async fn answered<T, E>(fut: impl std::future::Future<Output = Result<T, E>>) -> Option<T> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, fut).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

async fn insert(work: &Workload, client: &Client) -> bool {
    let id = fresh_ids(work, 1)[0];
    let ixs = work.register(&[ChangeId::Upsert { id, n: 0 }]);
    let done = answered(client.execute("INSERT INTO seq (id, n) VALUES ($1, 0)", &[&id])).await;
    match done {
        Some(_) => {
            work.settle(&ixs, Outcome::Committed(Instant::now()));
            work.model().live.push((id, 0));
            true
        }
        None => doubt(work, &ixs, &[id]),
    }
}

async fn update(work: &Workload, client: &Client, id: i64) -> bool {
    let next = fresh_n(work);
    let ixs = work.register(&[ChangeId::Upsert { id, n: next }]);
    let done = answered(client.execute("UPDATE seq SET n = $2 WHERE id = $1", &[&id, &next])).await;
    match done {
        Some(1) => {
            work.settle(&ixs, Outcome::Committed(Instant::now()));
            work.model().live.push((id, next));
            true
        }
        // The row is not where the model says: the check would be unsound.
        Some(rows) => {
            panic!("UPDATE of row {id} changed {rows} rows; the workload's model is wrong")
        }
        None => doubt(work, &ixs, &[id]),
    }
}

async fn delete(work: &Workload, client: &Client, id: i64) -> bool {
    let ixs = work.register(&[ChangeId::Delete { id }]);
    match answered(client.execute("DELETE FROM seq WHERE id = $1", &[&id])).await {
        Some(1) => {
            work.settle(&ixs, Outcome::Committed(Instant::now()));
            true
        }
        Some(rows) => {
            panic!("DELETE of row {id} removed {rows} rows; the workload's model is wrong")
        }
        // The row is retired, not left in doubt: if this delete did not
        // commit, deleting the row again would repeat the change `del:{id}`,
        // and the two attempts could not be told apart.
        None => doubt(work, &ixs, &[]),
    }
}

/// A transaction of several inserts and, when there is a live row, an
/// update.
async fn multi(work: &Workload, client: &Client, rng: &mut Rng) -> bool {
    let count = 2 + rng.index(9);
    let ids = fresh_ids(work, count);
    let updated = pick_live(work, rng).map(|(id, _)| (id, fresh_n(work)));
    let mut changes: Vec<ChangeId> = ids
        .iter()
        .map(|&id| ChangeId::Upsert { id, n: 0 })
        .collect();
    let mut sql = format!("BEGIN; INSERT INTO seq (id, n) VALUES {};", values(&ids));
    if let Some((id, n)) = updated {
        changes.push(ChangeId::Upsert { id, n });
        sql.push_str(&format!(" UPDATE seq SET n = {n} WHERE id = {id};"));
    }
    sql.push_str(" COMMIT;");
    let ixs = work.register(&changes);
    match answered(client.batch_execute(&sql)).await {
        Some(()) => {
            work.settle(&ixs, Outcome::Committed(Instant::now()));
            let mut m = work.model();
            m.live.extend(ids.iter().map(|&id| (id, 0)));
            m.live.extend(updated);
            true
        }
        None => {
            let mut rows = ids;
            rows.extend(updated.map(|(id, _)| id));
            doubt(work, &ixs, &rows)
        }
    }
}

/// Inserts rolled back: must never be invalidated.
async fn rolled_back(work: &Workload, client: &Client, rng: &mut Rng) -> bool {
    let ids = fresh_ids(work, 1 + rng.index(5));
    let changes: Vec<ChangeId> = ids
        .iter()
        .map(|&id| ChangeId::Upsert { id, n: 0 })
        .collect();
    let ixs = work.register(&changes);
    let sql = format!(
        "BEGIN; INSERT INTO seq (id, n) VALUES {}; ROLLBACK;",
        values(&ids)
    );
    match answered(client.batch_execute(&sql)).await {
        Some(()) => {
            work.settle(&ixs, Outcome::RolledBack);
            true
        }
        None => doubt(work, &ixs, &ids),
    }
}

/// New rows `ids` (each with `n = 0`) written by `sql`, for faults that
/// write around DDL themselves (the writer paused): registered before,
/// settled from the answer like the writer's own changes. `Ok(false)` when
/// the answer was lost (the rows stay in doubt).
pub async fn scripted(work: &Workload, client: &Client, ids: &[i64], sql: &str) -> Result<bool> {
    let changes: Vec<ChangeId> = ids
        .iter()
        .map(|&id| ChangeId::Upsert { id, n: 0 })
        .collect();
    let ixs = work.register(&changes);
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => {
            work.settle(&ixs, Outcome::Committed(Instant::now()));
            work.model().live.extend(ids.iter().map(|&id| (id, 0)));
            Ok(true)
        }
        // A statement Postgres refused changed nothing: the script is wrong.
        Ok(Err(e)) if e.as_db_error().is_some() => {
            work.settle(&ixs, Outcome::RolledBack);
            Err(e).with_context(|| format!("the fault's script failed: {sql}"))
        }
        _ => Ok(doubt(work, &ixs, ids)),
    }
}

/// `(id, 0), ...` for literal integers.
pub fn values(ids: &[i64]) -> String {
    ids.iter()
        .map(|id| format!("({id}, 0)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The answer was lost: the changes are uncertain and their rows left alone.
fn doubt(work: &Workload, ixs: &[ChangeIx], rows: &[i64]) -> bool {
    work.settle(ixs, Outcome::Unknown);
    work.model().in_doubt.extend_from_slice(rows);
    false
}

/// What the large UPDATE did.
#[derive(Debug, Clone)]
pub struct LargeTx {
    /// Its changes, in row order.
    pub changes: Vec<ChangeIx>,
    /// Whether Postgres acknowledged the commit.
    pub acknowledged: bool,
    /// From sending the UPDATE to its answer.
    pub took: Duration,
}

/// Sets `n` to the next value on every row of the large range, in one
/// transaction, on a connection of its own.
pub async fn large_update(work: &Workload, client: &Client) -> LargeTx {
    let rows = work.model().large_rows;
    let next = fresh_n(work);
    let ids: Vec<ChangeId> = (1..=rows)
        .map(|id| ChangeId::Upsert { id, n: next })
        .collect();
    let changes = work.register(&ids);
    let sent = Instant::now();
    let done = tokio::time::timeout(
        LARGE_TIMEOUT,
        client.execute("UPDATE seq SET n = $1 WHERE id <= $2", &[&next, &rows]),
    )
    .await;
    let acknowledged = match done {
        Ok(Ok(n)) if n == rows as u64 => {
            work.settle(&changes, Outcome::Committed(Instant::now()));
            true
        }
        Ok(Ok(n)) => {
            panic!("the large UPDATE changed {n} of {rows} rows; the workload's model is wrong")
        }
        _ => {
            work.settle(&changes, Outcome::Unknown);
            false
        }
    };
    LargeTx {
        changes,
        acknowledged,
        took: sent.elapsed(),
    }
}

/// What [`resolve`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resolved {
    pub committed: u64,
    pub not_committed: u64,
}

/// Reads back every row with an uncertain change and settles each change
/// by what the row shows. Must run while nothing writes (the writer is
/// paused and the large UPDATE finished).
pub async fn resolve(work: &Workload, client: &Client) -> Result<Resolved> {
    let unresolved = lock(&work.ledger).unresolved();
    if unresolved.is_empty() {
        return Ok(Resolved::default());
    }
    let mut rows: Vec<i64> = unresolved.iter().map(|(_, id)| id.row()).collect();
    rows.extend(work.model().in_doubt.iter().copied());
    rows.sort_unstable();
    rows.dedup();
    let mut current: HashMap<i64, i32> = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(10_000) {
        let found = client
            .query("SELECT id, n FROM seq WHERE id = ANY($1)", &[&chunk])
            .await
            .context("cannot read back rows with uncertain changes")?;
        for row in found {
            current.insert(row.get(0), row.get(1));
        }
    }
    let mut resolved = Resolved::default();
    {
        let mut l = lock(&work.ledger);
        for (ix, id) in &unresolved {
            if id.visible_in(current.get(&id.row()).copied()) {
                l.committed(*ix, None);
                resolved.committed += 1;
            } else {
                l.not_committed(*ix);
                resolved.not_committed += 1;
            }
        }
    }
    let mut m = work.model();
    let in_doubt = std::mem::take(&mut m.in_doubt);
    for id in in_doubt {
        if let Some(&n) = current.get(&id) {
            m.live.push((id, n));
        }
    }
    Ok(resolved)
}

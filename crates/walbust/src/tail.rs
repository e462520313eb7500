//! `walbust tail`: watch what the rules would invalidate, live, without
//! invalidating anything.
//!
//! ```text
//! walsender ──> walbust_cdc::Reader (temporary slot) ──Item──> printer ──Item──> Pipeline (no sinks)
//!                    │ tap: changes per transaction ───────^                  │
//!                    ^────────────── confirmed end LSN ───────────────────────┘
//! ```
//!
//! The reader is the one `run` uses, so what is printed is exactly what
//! `run` would publish, explicit invalidation messages included. Its slot
//! is temporary (created on the replication session, gone with it), so
//! tail leaves nothing behind and holds no WAL once stopped. The printer
//! sits between the reader and a pipeline without sinks: it prints each
//! transaction at its commit and passes the items on, and the pipeline
//! confirms them at once, so acknowledgements flow as they do in `run` and
//! the temporary slot does not hold WAL while tail runs.
//!
//! Tail needs the publication to exist (it never creates anything durable)
//! and watches the rules file like `run` does, so edits show at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use walbust_flow::{Feed, Item};
use walbust_pgoutput::format_lsn;
use walbust_pgoutput::time::format_rfc3339;
use walbust_publish::{Pipeline, PipelineHandle};
use walbust_rules::{Invalidations, Op, RuleSet};

use crate::config::Config;
use crate::reload::{PublicationCheck, Reloader, WatcherGuard};
use crate::{fail, fail_config};

/// At most this many distinct keys (and as many tags, and patterns) are
/// shown per transaction; a bulk UPDATE shows a count of the rest.
pub const MAX_SHOWN: usize = 1000;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// The configuration file: its source and rules are used, its sinks are not.
    #[arg(long, short, env = "WALBUST_CONFIG", default_value = "walbust.yaml")]
    config: PathBuf,
    /// Print one JSON object per transaction instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn tail(args: TailArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return fail_config(e),
    };
    let rules = match RuleSet::load(&cfg.rules) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail_config(e),
    };
    if let Err(e) = check_source(&cfg, &rules).await {
        return fail(e);
    }
    let conn = match walbust_cdc::ConnParams::from_url(&cfg.source.url) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let slot = format!("walbust_tail_{}", std::process::id());
    let shutdown = crate::shutdown_signal();

    let (rules_tx, rules_rx) = watch::channel(rules.clone());
    let (in_effect_tx, in_effect_rx) = watch::channel(rules);
    let _reloader = WatcherGuard(
        Reloader::new(
            cfg.rules.clone(),
            Some(PublicationCheck {
                url: cfg.source.url.clone(),
                publication: cfg.source.publication.clone(),
            }),
        )
        .with_in_effect(in_effect_rx)
        .spawn(rules_tx, shutdown.clone()),
    );

    let pipeline_cfg = cfg.publish.pipeline();
    let capacity = pipeline_cfg.channel_capacity.max(1);
    let PipelineHandle {
        feed,
        task: pipeline,
    } = Pipeline::spawn(pipeline_cfg, Vec::new());
    let Ok((to_pipeline, confirmed)) = feed.into_parts() else {
        return fail(anyhow::anyhow!("the publishing pipeline stopped"));
    };
    let (to_printer, from_reader) = mpsc::channel(capacity);
    let changes = Arc::new(Mutex::new(ChangeCounts::default()));
    let printer = tokio::spawn(print(from_reader, to_pipeline, changes.clone(), args.json));

    let spec = walbust_cdc::StreamSpec {
        conn,
        slot: slot.clone(),
        publication: cfg.source.publication.clone(),
        status_interval: cfg.status_interval(),
        application_name: format!("{} tail", cfg.source.application_name),
        temporary_slot: true,
        binary: cfg.source.binary,
    };
    let tap: walbust_cdc::ChangeTap = Arc::new(move |ev: &walbust_cdc::ChangeEvent<'_>| {
        if let Ok(mut counts) = changes.lock() {
            counts.add(ev.commit_lsn, ev.table, ev.op);
        }
    });
    tracing::info!(
        publication = %cfg.source.publication,
        slot = %slot,
        "tailing through a temporary slot; nothing is published (Ctrl-C to stop)"
    );
    // The catalog tells binary mode how enums and domains render, as it
    // does for `run`.
    let outcome = walbust_cdc::Reader::new(spec, rules_rx)
        .with_explicit_policy(cfg.explicit.policy())
        .with_catalog(cfg.source.url.clone())
        .with_in_effect(in_effect_tx)
        .with_tap(tap)
        .run(Feed::new(to_printer, confirmed), shutdown)
        .await;
    // The reader closed the printer's input; the printer closes the
    // pipeline's.
    let _ = printer.await;
    match outcome {
        Ok(_) => {
            let _ = pipeline.await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            pipeline.abort();
            fail(e)
        }
    }
}

/// The publication must exist; tables the rules name that it lacks are
/// worth a warning (their changes will not show).
async fn check_source(cfg: &Config, rules: &RuleSet) -> anyhow::Result<()> {
    let client = walbust_cdc::source::connect(&cfg.source.url).await?;
    let Some(publication) =
        walbust_cdc::catalog::publication(&client, &cfg.source.publication).await?
    else {
        anyhow::bail!(
            "publication \"{}\" does not exist; tail creates nothing durable: create it \
             (see deploy/postgres-setup.sql) or let `walbust run` with source.create: true create it",
            cfg.source.publication
        );
    };
    let missing: Vec<String> = rules
        .tables()
        .into_iter()
        .filter(|t| !publication.tables.contains(t))
        .map(|t| t.to_string())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            publication = %publication.name,
            tables = %missing.join(", "),
            "the publication lacks tables the rules name: their changes will not show (walbust check --db says why)"
        );
    }
    Ok(())
}

/// Row changes per transaction (by commit LSN), table and operation, from
/// the reader's tap.
#[derive(Default)]
struct ChangeCounts {
    by_tx: HashMap<u64, Vec<(String, Op, u64)>>,
}

impl ChangeCounts {
    fn add(&mut self, commit_lsn: u64, table: &str, op: Op) {
        let list = self.by_tx.entry(commit_lsn).or_default();
        match list.iter_mut().find(|(t, o, _)| t == table && *o == op) {
            Some((_, _, n)) => *n += 1,
            None => list.push((table.to_owned(), op, 1)),
        }
    }

    /// Takes the counts of the transaction committed at `commit_lsn`, and
    /// forgets any older one (a transaction cut by a reconnection).
    fn take(&mut self, commit_lsn: u64) -> Vec<(String, Op, u64)> {
        let out = self.by_tx.remove(&commit_lsn).unwrap_or_default();
        self.by_tx.retain(|lsn, _| *lsn > commit_lsn);
        out
    }
}

/// Distinct values in arrival order, at most [`MAX_SHOWN`], and how many
/// more there were.
#[derive(Default)]
struct Shown {
    values: Vec<String>,
    more: usize,
}

impl Shown {
    fn add(&mut self, items: Vec<String>) {
        for v in items {
            if self.values.contains(&v) {
                continue;
            }
            if self.values.len() < MAX_SHOWN {
                self.values.push(v);
            } else {
                // Beyond the cap duplicates are not tracked: "at least".
                self.more += 1;
            }
        }
    }
}

/// One transaction being received.
#[derive(Default)]
struct Tx {
    xid: u32,
    commit_lsn: u64,
    commit_time_micros: i64,
    keys: Shown,
    tags: Shown,
    patterns: Shown,
}

impl Tx {
    fn add(&mut self, inv: Invalidations) {
        self.keys.add(inv.keys);
        self.tags.add(inv.tags);
        self.patterns.add(inv.patterns);
    }

    fn text(&self, end_lsn: u64, changes: &[(String, Op, u64)]) -> String {
        let mut s = String::new();
        let what = if self.xid == 0 {
            "message".to_owned()
        } else {
            format!("tx {}", self.xid)
        };
        let _ = write!(
            s,
            "{what} committed {} at commit LSN {} (end {})",
            format_rfc3339(self.commit_time_micros),
            format_lsn(self.commit_lsn),
            format_lsn(end_lsn)
        );
        if !changes.is_empty() {
            let list = changes
                .iter()
                .map(|(t, op, n)| format!("{t} {op} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(s, ": {list}");
        }
        s.push('\n');
        let lists = [
            ("keys", &self.keys),
            ("tags", &self.tags),
            ("patterns", &self.patterns),
        ];
        if lists.iter().all(|(_, l)| l.values.is_empty()) {
            s.push_str("  nothing to invalidate\n");
            return s;
        }
        for (name, list) in lists {
            if list.values.is_empty() {
                continue;
            }
            let _ = write!(s, "  {name}: {}", list.values.join(" "));
            if list.more > 0 {
                let _ = write!(s, " ... and {} more", list.more);
            }
            s.push('\n');
        }
        s
    }

    fn json(&self, end_lsn: u64, changes: &[(String, Op, u64)]) -> serde_json::Value {
        json!({
            "xid": self.xid,
            "commit_lsn": format_lsn(self.commit_lsn),
            "end_lsn": format_lsn(end_lsn),
            "commit_ts": format_rfc3339(self.commit_time_micros),
            "changes": changes
                .iter()
                .map(|(t, op, n)| json!({"table": t, "op": op.as_str(), "count": n}))
                .collect::<Vec<_>>(),
            "keys": self.keys.values,
            "tags": self.tags.values,
            "patterns": self.patterns.values,
            "more": {
                "keys": self.keys.more,
                "tags": self.tags.more,
                "patterns": self.patterns.more,
            },
        })
    }
}

/// Prints each transaction at its commit and passes every item on.
async fn print(
    mut from_reader: mpsc::Receiver<Item>,
    to_pipeline: mpsc::Sender<Item>,
    changes: Arc<Mutex<ChangeCounts>>,
    json: bool,
) {
    let mut open: Option<Tx> = None;
    while let Some(item) = from_reader.recv().await {
        match &item {
            Item::Begin {
                xid,
                commit_lsn,
                commit_time_micros,
            } => {
                open = Some(Tx {
                    xid: *xid,
                    commit_lsn: *commit_lsn,
                    commit_time_micros: *commit_time_micros,
                    ..Tx::default()
                });
            }
            Item::Changes(inv) => {
                if let Some(tx) = open.as_mut() {
                    tx.add(inv.clone());
                }
            }
            Item::Commit { end_lsn } => {
                if let Some(tx) = open.take() {
                    let counts = changes
                        .lock()
                        .map(|mut c| c.take(tx.commit_lsn))
                        .unwrap_or_default();
                    if json {
                        println!("{}", tx.json(*end_lsn, &counts));
                    } else {
                        print!("{}", tx.text(*end_lsn, &counts));
                    }
                }
            }
        }
        if to_pipeline.send(item).await.is_err() {
            // The pipeline stopped; the reader notices on its own.
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_prints_what_it_invalidates() {
        let mut tx = Tx {
            xid: 745,
            commit_lsn: 0x16B3748,
            commit_time_micros: 0,
            ..Tx::default()
        };
        tx.add(Invalidations {
            keys: vec!["product:1".into()],
            tags: vec!["category:3".into(), "products".into()],
            patterns: vec![],
            ..Default::default()
        });
        tx.add(Invalidations {
            keys: vec!["product:1".into(), "product:2".into()],
            tags: vec![],
            patterns: vec![],
            ..Default::default()
        });
        let changes = vec![("public.products".to_owned(), Op::Update, 2)];
        let text = tx.text(0x16B3778, &changes);
        assert_eq!(
            text,
            "tx 745 committed 2000-01-01T00:00:00.000000Z at commit LSN 0/16B3748 (end 0/16B3778): public.products update x2\n  keys: product:1 product:2\n  tags: category:3 products\n"
        );
        let json = tx.json(0x16B3778, &changes);
        assert_eq!(json["keys"], json!(["product:1", "product:2"]));
        assert_eq!(json["changes"][0]["count"], 2);
        assert_eq!(json["commit_lsn"], "0/16B3748");
    }

    #[test]
    fn an_empty_transaction_says_so_and_long_lists_are_cut() {
        let mut tx = Tx::default();
        assert!(tx.text(1, &[]).ends_with("  nothing to invalidate\n"));
        tx.add(Invalidations {
            keys: (0..MAX_SHOWN + 5).map(|i| format!("k:{i}")).collect(),
            ..Invalidations::default()
        });
        assert_eq!(tx.keys.values.len(), MAX_SHOWN);
        assert!(tx.text(1, &[]).contains("... and 5 more"));
    }

    #[test]
    fn change_counts_are_taken_per_transaction() {
        let mut c = ChangeCounts::default();
        c.add(10, "public.a", Op::Insert);
        c.add(10, "public.a", Op::Insert);
        c.add(10, "public.b", Op::Delete);
        c.add(5, "public.a", Op::Update);
        c.add(20, "public.a", Op::Update);
        assert_eq!(
            c.take(10),
            vec![
                ("public.a".to_owned(), Op::Insert, 2),
                ("public.b".to_owned(), Op::Delete, 1)
            ]
        );
        // Older leftovers are dropped, later ones kept.
        assert!(c.take(5).is_empty());
        assert_eq!(c.take(20).len(), 1);
    }

    #[tokio::test]
    async fn a_pipeline_without_sinks_confirms() {
        let PipelineHandle { feed, task } =
            Pipeline::spawn(walbust_publish::PipelineConfig::default(), Vec::new());
        let (tx, mut confirmed) = feed.into_parts().unwrap();
        tx.send(Item::Begin {
            xid: 1,
            commit_lsn: 100,
            commit_time_micros: 0,
        })
        .await
        .unwrap();
        tx.send(Item::Changes(Invalidations {
            keys: vec!["k".into()],
            ..Invalidations::default()
        }))
        .await
        .unwrap();
        tx.send(Item::Commit { end_lsn: 120 }).await.unwrap();
        let lsn = *confirmed.wait_for(|l| *l >= 120).await.unwrap();
        assert_eq!(lsn, 120);
        drop(tx);
        task.await.unwrap().unwrap();
    }
}

//! Shared by the sink tests of this crate: batches to publish, and a
//! pipeline over one real sink whose failures a test can wait for.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use walbust_publish::{
    Batch, BatchObserver, Item, Pipeline, PipelineConfig, PipelineError, Sink, SinkError,
};

pub fn strings<S: AsRef<str>>(v: impl IntoIterator<Item = S>) -> Vec<String> {
    v.into_iter().map(|s| s.as_ref().to_string()).collect()
}

/// A batch of transaction 1234 at 0/16B3748, committed at
/// 2026-11-22T10:00:00.123456Z. Keys are sorted, as the pipeline sorts them.
pub fn batch(keys: Vec<String>, tags: Vec<String>, patterns: Vec<String>) -> Batch {
    let mut keys = keys;
    keys.sort();
    Batch {
        lsn: 0x16B3748,
        end_lsn: Some(0x16B3800),
        // 2026-11-22T10:00:00.123456Z in Postgres-epoch microseconds.
        commit_time_micros: (1_795_341_600 - 946_684_800) * 1_000_000 + 123_456,
        first_commit_time_micros: 0,
        xids: vec![1234],
        keys,
        tags,
        patterns,
        ..Default::default()
    }
}

/// A real sink that counts the publishes it failed, so a test can wait
/// until the pipeline met a failure (and retried) before it asserts that
/// nothing was acknowledged.
pub struct Watched {
    inner: Arc<dyn Sink>,
    failures: watch::Sender<u32>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Sink>) -> Arc<Watched> {
        Arc::new(Watched {
            inner,
            failures: watch::Sender::new(0),
        })
    }

    /// Waits until `count` publishes failed; fails the test after `timeout`.
    pub async fn wait_failures(&self, count: u32, timeout: Duration) {
        let mut failures = self.failures.subscribe();
        tokio::time::timeout(timeout, failures.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {count} failed publishes within {timeout:?}",
                    *self.failures.borrow()
                )
            })
            .unwrap();
    }
}

impl Sink for Watched {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let result = self.inner.publish(batch).await;
            if result.is_err() {
                self.failures.send_modify(|n| *n += 1);
            }
            result
        }
        .boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        self.inner.health()
    }
}

/// A pipeline over one sink that records how many attempts each confirmed
/// batch took.
pub struct Run {
    pub tx: mpsc::Sender<Item>,
    pub confirmed: watch::Receiver<u64>,
    pub task: JoinHandle<Result<(), PipelineError>>,
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Run {
    pub fn spawn(cfg: PipelineConfig, sink: Arc<dyn Sink>) -> Run {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        let observer: BatchObserver = Arc::new(move |_batch, report| {
            seen.lock().unwrap().push(report.sinks[0].attempts);
        });
        let pipeline = Pipeline::spawn_with_observer(cfg, vec![sink], Some(observer));
        let task = pipeline.task;
        let (tx, confirmed) = pipeline.feed.into_parts().unwrap();
        Run {
            tx,
            confirmed,
            task,
            attempts,
        }
    }

    /// Sends one transaction `xid` committed at `commit_lsn`, ending at
    /// `commit_lsn + 8`.
    pub async fn send(&self, xid: u32, commit_lsn: u64, changes: walbust_rules::Invalidations) {
        self.tx
            .send(Item::Begin {
                xid,
                commit_lsn,
                commit_time_micros: 0,
            })
            .await
            .unwrap();
        self.tx.send(Item::Changes(changes)).await.unwrap();
        self.tx
            .send(Item::Commit {
                end_lsn: commit_lsn + 8,
            })
            .await
            .unwrap();
    }

    /// Waits until `lsn` is confirmed; fails the test after `timeout`.
    pub async fn wait_confirmed(&mut self, lsn: u64, timeout: Duration) {
        tokio::time::timeout(timeout, self.confirmed.wait_for(|c| *c == lsn))
            .await
            .unwrap_or_else(|_| panic!("{lsn} not confirmed within {timeout:?}"))
            .unwrap();
    }

    /// Ends the pipeline and returns the attempts of every confirmed batch.
    pub async fn finish(self) -> Vec<u32> {
        drop(self.tx);
        self.task.await.unwrap().unwrap();
        let attempts = self.attempts.lock().unwrap().clone();
        attempts
    }
}

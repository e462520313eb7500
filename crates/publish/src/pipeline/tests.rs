//! Pipeline behaviour against an in-memory sink: batching, coalescing, ordering, partial
//! transactions, retries, backpressure and shutdown. Time is paused (`start_paused`), so backoff
//! and `max_delay` run instantly and deterministically.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Semaphore;

use super::*;
use crate::sink::SinkErrorKind;

/// A sink that records confirmed batches; can fail on chosen calls and hold chosen calls until
/// released.
struct MemorySink {
    name: &'static str,
    calls: AtomicUsize,
    confirmed: Mutex<Vec<Batch>>,
    /// Consumed one per call: the call fails with this kind.
    failures: Mutex<VecDeque<SinkErrorKind>>,
    /// Call index → gate the call waits on (one permit releases it).
    gates: Mutex<HashMap<usize, Arc<Semaphore>>>,
}

impl MemorySink {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            calls: AtomicUsize::new(0),
            confirmed: Mutex::new(Vec::new()),
            failures: Mutex::new(VecDeque::new()),
            gates: Mutex::new(HashMap::new()),
        })
    }

    fn fail_next(&self, kinds: &[SinkErrorKind]) {
        self.failures.lock().unwrap().extend(kinds);
    }

    /// Makes call `index` wait until the returned gate gets a permit.
    fn hold_call(&self, index: usize) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.gates.lock().unwrap().insert(index, gate.clone());
        gate
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn batches(&self) -> Vec<Batch> {
        self.confirmed.lock().unwrap().clone()
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let index = self.calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.gates.lock().unwrap().get(&index).cloned();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            let failure = self.failures.lock().unwrap().pop_front();
            if let Some(kind) = failure {
                return Err(SinkError::new(
                    kind,
                    format!("{} failing on purpose", self.name),
                ));
            }
            self.confirmed.lock().unwrap().push(batch.clone());
            Ok(())
        }
        .boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

fn cfg() -> PipelineConfig {
    PipelineConfig {
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(80),
        ..PipelineConfig::default()
    }
}

fn inv(keys: &[&str]) -> walbust_rules::Invalidations {
    walbust_rules::Invalidations {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        tags: Vec::new(),
        patterns: Vec::new(),
        ..Default::default()
    }
}

fn begin(xid: u32) -> Item {
    Item::Begin {
        xid,
        commit_lsn: lsn(xid),
        commit_time_micros: 800_000_000_000_000 + i64::from(xid),
    }
}

/// Commit LSN of transaction `xid` in these tests; its end LSN is this plus 8.
fn lsn(xid: u32) -> u64 {
    u64::from(xid) * 100
}

fn commit(xid: u32) -> Item {
    Item::Commit {
        end_lsn: lsn(xid) + 8,
    }
}

async fn send_tx(tx: &mpsc::Sender<Item>, xid: u32, keys: &[&str]) {
    tx.send(begin(xid)).await.unwrap();
    tx.send(Item::Changes(inv(keys))).await.unwrap();
    tx.send(commit(xid)).await.unwrap();
}

/// Lets the pipeline run until `cond` holds (time is paused, so this costs no real time).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Lets the pipeline run for a while (paused time) without expecting anything.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

type Parts = (
    mpsc::Sender<Item>,
    watch::Receiver<u64>,
    JoinHandle<Result<(), PipelineError>>,
);

/// The handle taken apart: these tests drive the channel and the watch
/// directly.
fn parts(handle: PipelineHandle) -> Parts {
    let (tx, confirmed) = handle.feed.into_parts().unwrap();
    (tx, confirmed, handle.task)
}

fn spawn(cfg: PipelineConfig, sink: &Arc<MemorySink>) -> Parts {
    parts(Pipeline::spawn(cfg, vec![sink.clone() as Arc<dyn Sink>]))
}

#[tokio::test(start_paused = true)]
async fn lone_transaction_is_published_at_once_and_acknowledged() {
    let sink = MemorySink::new("mem");
    let (tx, mut confirmed, task) = spawn(cfg(), &sink);
    let before = Instant::now();
    send_tx(&tx, 1, &["b", "a", "b"]).await;
    confirmed.changed().await.unwrap();
    assert_eq!(*confirmed.borrow(), lsn(1) + 8);
    assert_eq!(Instant::now(), before, "no wait at all with max_delay = 0");

    let batches = sink.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].keys, ["a", "b"], "coalesced and ordered");
    assert_eq!(batches[0].xids, [1]);
    assert_eq!(batches[0].lsn, lsn(1));
    assert_eq!(batches[0].end_lsn, Some(lsn(1) + 8));

    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn items_accumulate_while_a_batch_is_in_flight() {
    let sink = MemorySink::new("mem");
    let gate = sink.hold_call(0);
    let (tx, confirmed, task) = spawn(cfg(), &sink);

    send_tx(&tx, 1, &["k1"]).await;
    eventually("first batch in flight", || sink.calls() == 1).await;
    send_tx(&tx, 2, &["k2", "shared"]).await;
    send_tx(&tx, 3, &["k3", "shared"]).await;
    settle().await;
    assert_eq!(sink.calls(), 1, "max_in_flight = 1: the next batch waits");
    assert_eq!(*confirmed.borrow(), 0, "nothing confirmed yet");

    gate.add_permits(1);
    eventually("all confirmed", || *confirmed.borrow() == lsn(3) + 8).await;
    let batches = sink.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].keys, ["k2", "k3", "shared"]);
    assert_eq!(batches[1].xids, [2, 3]);
    assert_eq!(batches[1].lsn, lsn(3));
    assert_eq!(batches[1].first_commit_time_micros, 800_000_000_000_000 + 2);
    assert_eq!(batches[1].commit_time_micros, 800_000_000_000_000 + 3);
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn large_transaction_is_flushed_in_parts_and_acknowledged_only_at_its_commit() {
    let sink = MemorySink::new("mem");
    // Hold the final part so the state before the commit's batch is confirmed can be observed.
    let last_part = sink.hold_call(4);
    let cfg = PipelineConfig {
        max_keys: 2,
        ..cfg()
    };
    let (tx, confirmed, task) = spawn(cfg, &sink);

    send_tx(&tx, 1, &["before"]).await;
    eventually("small tx confirmed", || *confirmed.borrow() == lsn(1) + 8).await;

    tx.send(begin(2)).await.unwrap();
    for i in 0..6 {
        tx.send(Item::Changes(inv(&[&format!("row:{i}")])))
            .await
            .unwrap();
    }
    eventually("three partial batches", || sink.batches().len() == 4).await;
    assert_eq!(
        *confirmed.borrow(),
        lsn(1) + 8,
        "parts of an open transaction acknowledge nothing"
    );
    for part in &sink.batches()[1..] {
        assert_eq!(part.end_lsn, None);
        assert_eq!(part.xids, [2]);
        assert_eq!(part.keys.len(), 2);
    }

    tx.send(Item::Changes(inv(&["row:last"]))).await.unwrap();
    tx.send(commit(2)).await.unwrap();
    eventually("commit part in flight", || sink.calls() == 5).await;
    settle().await;
    assert_eq!(
        *confirmed.borrow(),
        lsn(1) + 8,
        "commit part not confirmed yet"
    );

    last_part.add_permits(1);
    eventually("commit confirmed", || *confirmed.borrow() == lsn(2) + 8).await;
    let batches = sink.batches();
    let last = batches.last().unwrap();
    assert_eq!(last.keys, ["row:last"]);
    assert_eq!(last.end_lsn, Some(lsn(2) + 8));
    let published: usize = batches.iter().map(|b| b.keys.len()).sum();
    assert_eq!(published, 1 + 6 + 1, "every key published exactly once");
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn failing_sink_is_retried_until_it_succeeds_and_nothing_is_skipped() {
    let sink = MemorySink::new("mem");
    sink.fail_next(&[
        SinkErrorKind::Connect,
        SinkErrorKind::Timeout,
        SinkErrorKind::Unavailable,
    ]);
    let gate = sink.hold_call(2);
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    send_tx(&tx, 1, &["k1"]).await;
    send_tx(&tx, 2, &["k2"]).await;

    eventually("third attempt started", || sink.calls() == 3).await;
    assert!(sink.batches().is_empty());
    assert_eq!(*confirmed.borrow(), 0, "no ack before success");

    gate.add_permits(1);
    eventually("confirmed", || *confirmed.borrow() == lsn(2) + 8).await;
    assert_eq!(sink.calls(), 4, "three failures, then success");
    let batches = sink.batches();
    assert_eq!(batches.len(), 1, "the same batch was retried, not skipped");
    assert_eq!(batches[0].keys, ["k1", "k2"]);
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_delays_grow_and_stay_within_retry_max() {
    let sink = MemorySink::new("mem");
    sink.fail_next(&[SinkErrorKind::Connect; 8]);
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    let start = Instant::now();
    send_tx(&tx, 1, &["k"]).await;
    eventually("confirmed", || *confirmed.borrow() == lsn(1) + 8).await;
    let waited = start.elapsed();
    // Delays 10, 20, 40, 80, 80, 80, 80, 80 ms at least; jitter at most doubles them, capped at 80.
    assert!(waited >= Duration::from_millis(470), "{waited:?}");
    assert!(waited <= Duration::from_millis(8 * 80 + 20), "{waited:?}");
    assert_eq!(sink.calls(), 9);
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn only_the_failing_sink_is_retried() {
    let good = MemorySink::new("good");
    let flaky = MemorySink::new("flaky");
    flaky.fail_next(&[SinkErrorKind::Connect, SinkErrorKind::Connect]);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let observer: BatchObserver = Arc::new(move |batch: &Batch, report: &BatchReport| {
        seen.lock()
            .unwrap()
            .push((batch.keys.clone(), report.sinks.clone()));
    });
    let (tx, confirmed, task) = parts(Pipeline::spawn_with_observer(
        cfg(),
        vec![good.clone() as Arc<dyn Sink>, flaky.clone()],
        Some(observer),
    ));
    send_tx(&tx, 1, &["k"]).await;
    eventually("confirmed", || *confirmed.borrow() == lsn(1) + 8).await;
    assert_eq!(good.calls(), 1);
    assert_eq!(flaky.calls(), 3);

    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let (keys, sinks) = &reports[0];
    assert_eq!(keys, &["k"]);
    assert_eq!(sinks[0].sink, "good");
    assert_eq!(sinks[0].attempts, 1);
    assert_eq!(sinks[1].sink, "flaky");
    assert_eq!(sinks[1].attempts, 3);
    assert!(sinks[1].elapsed >= Duration::from_millis(30));
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn non_retriable_error_stops_the_pipeline_without_acknowledging() {
    let sink = MemorySink::new("mem");
    sink.fail_next(&[SinkErrorKind::Connect, SinkErrorKind::Rejected]);
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    send_tx(&tx, 1, &["k"]).await;
    let err = task.await.unwrap().unwrap_err();
    match &err {
        PipelineError::Sink { sink, source } => {
            assert_eq!(*sink, "mem");
            assert_eq!(source.kind(), SinkErrorKind::Rejected);
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(sink.calls(), 2);
    assert_eq!(*confirmed.borrow(), 0);
}

#[tokio::test(start_paused = true)]
async fn acknowledgements_follow_lsn_order_with_several_batches_in_flight() {
    let sink = MemorySink::new("mem");
    let first = sink.hold_call(0);
    let second = sink.hold_call(1);
    let cfg = PipelineConfig {
        max_in_flight: 2,
        ..cfg()
    };
    let (tx, confirmed, task) = spawn(cfg, &sink);
    send_tx(&tx, 1, &["a"]).await;
    eventually("first in flight", || sink.calls() == 1).await;
    send_tx(&tx, 2, &["b"]).await;
    eventually("second in flight", || sink.calls() == 2).await;

    second.add_permits(1);
    eventually("second confirmed by the sink", || sink.batches().len() == 1).await;
    settle().await;
    assert_eq!(
        *confirmed.borrow(),
        0,
        "the later batch is confirmed, but the earlier one is not"
    );

    first.add_permits(1);
    eventually("both acknowledged", || *confirmed.borrow() == lsn(2) + 8).await;
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_delay_lets_a_batch_wait_to_fill() {
    let sink = MemorySink::new("mem");
    let cfg = PipelineConfig {
        max_delay: Duration::from_millis(50),
        ..cfg()
    };
    let (tx, confirmed, task) = spawn(cfg, &sink);
    let start = Instant::now();
    send_tx(&tx, 1, &["a"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sink.calls(), 0, "waiting for more");
    send_tx(&tx, 2, &["b"]).await;
    eventually("confirmed", || *confirmed.borrow() == lsn(2) + 8).await;
    let batches = sink.batches();
    assert_eq!(batches.len(), 1, "both transactions in one batch");
    assert_eq!(batches[0].keys, ["a", "b"]);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_millis(60),
        "{waited:?}"
    );
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_does_not_wait_for_max_delay() {
    let sink = MemorySink::new("mem");
    let cfg = PipelineConfig {
        max_delay: Duration::from_secs(10),
        max_keys: 3,
        ..cfg()
    };
    let (tx, confirmed, task) = spawn(cfg, &sink);
    let start = Instant::now();
    send_tx(&tx, 1, &["a", "b", "c"]).await;
    eventually("confirmed", || *confirmed.borrow() == lsn(1) + 8).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stuck_sink_makes_the_channel_fill_up() {
    let sink = MemorySink::new("mem");
    let gate = sink.hold_call(0);
    let cfg = PipelineConfig {
        max_keys: 2,
        channel_capacity: 4,
        ..cfg()
    };
    let (tx, confirmed, task) = spawn(cfg, &sink);
    send_tx(&tx, 1, &["first"]).await;
    eventually("first batch in flight", || sink.calls() == 1).await;

    // One large transaction, one key per item, offered without waiting.
    let mut items = vec![begin(2)];
    items.extend((0..50).map(|i| Item::Changes(inv(&[&format!("row:{i}")]))));
    items.push(commit(2));
    let mut accepted = 0;
    for item in items {
        match tx.try_send(item) {
            Ok(()) => accepted += 1,
            Err(mpsc::error::TrySendError::Full(item)) => {
                // Give the pipeline every chance to drain before concluding it stopped reading.
                settle().await;
                match tx.try_send(item) {
                    Ok(()) => accepted += 1,
                    Err(_) => break,
                }
            }
            Err(err) => panic!("{err}"),
        }
    }
    // Begin + 2 keys fill the batch being built; the channel holds 4 more.
    assert_eq!(accepted, 7, "the pipeline stops reading when full");
    assert_eq!(sink.calls(), 1);

    gate.add_permits(1);
    let rest: Vec<Item> = (accepted..52)
        .map(|i| {
            if i == 51 {
                commit(2)
            } else {
                Item::Changes(inv(&[&format!("row:{}", i - 1)]))
            }
        })
        .collect();
    for item in rest {
        tx.send(item).await.unwrap();
    }
    eventually("all confirmed", || *confirmed.borrow() == lsn(2) + 8).await;
    let published: usize = sink.batches().iter().map(|b| b.keys.len()).sum();
    assert_eq!(published, 1 + 50);
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_publishes_everything_held_then_returns_ok() {
    let sink = MemorySink::new("mem");
    let gate = sink.hold_call(0);
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    send_tx(&tx, 1, &["a"]).await;
    eventually("first in flight", || sink.calls() == 1).await;
    send_tx(&tx, 2, &["b"]).await;
    send_tx(&tx, 3, &["c"]).await;
    drop(tx);
    settle().await;
    assert!(!task.is_finished(), "waits for the in-flight batch");
    gate.add_permits(1);
    task.await.unwrap().unwrap();
    assert_eq!(*confirmed.borrow(), lsn(3) + 8, "final LSN sent");
    let keys: Vec<String> = sink.batches().into_iter().flat_map(|b| b.keys).collect();
    assert_eq!(keys, ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_keeps_retrying_a_failing_sink() {
    let sink = MemorySink::new("mem");
    sink.fail_next(&[SinkErrorKind::Connect; 20]);
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    send_tx(&tx, 1, &["a"]).await;
    drop(tx);
    task.await.unwrap().unwrap();
    assert_eq!(sink.calls(), 21);
    assert_eq!(*confirmed.borrow(), lsn(1) + 8);
}

#[tokio::test(start_paused = true)]
async fn empty_transactions_are_acknowledged_without_calling_sinks() {
    let sink = MemorySink::new("mem");
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    for xid in 1..=3 {
        tx.send(begin(xid)).await.unwrap();
        tx.send(Item::Changes(inv(&[]))).await.unwrap();
        tx.send(commit(xid)).await.unwrap();
    }
    eventually("acknowledged", || *confirmed.borrow() == lsn(3) + 8).await;
    assert_eq!(sink.calls(), 0);
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_open_transaction_at_shutdown_is_published_but_not_acknowledged() {
    let sink = MemorySink::new("mem");
    let (tx, confirmed, task) = spawn(cfg(), &sink);
    send_tx(&tx, 1, &["a"]).await;
    tx.send(begin(2)).await.unwrap();
    tx.send(Item::Changes(inv(&["b"]))).await.unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    assert_eq!(*confirmed.borrow(), lsn(1) + 8);
    let keys: Vec<String> = sink.batches().into_iter().flat_map(|b| b.keys).collect();
    assert_eq!(keys, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn out_of_order_items_stop_the_pipeline() {
    let sink = MemorySink::new("mem");
    let (tx, _confirmed, task) = spawn(cfg(), &sink);
    tx.send(Item::Changes(inv(&["a"]))).await.unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::Sequence(SequenceError::ChangesWithoutBegin)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_reported_by_the_task() {
    let cfg = PipelineConfig {
        max_in_flight: 0,
        channel_capacity: 0,
        ..PipelineConfig::default()
    };
    let task = Pipeline::spawn(cfg, Vec::new()).task;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid pipeline configuration: publish.max_in_flight: must be at least 1; \
         publish.channel_capacity: must be at least 1"
    );
}

#[test]
fn config_validation_names_fields() {
    assert_eq!(PipelineConfig::default().validate(), Ok(()));
    let errors = PipelineConfig {
        max_keys: 0,
        retry_min: Duration::from_secs(5),
        retry_max: Duration::from_secs(1),
        ..PipelineConfig::default()
    }
    .validate()
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "publish.max_keys: must be at least 1",
            "publish.retry_max: must not be shorter than retry_min",
        ]
    );
}

/// A gate that opens as a watched position (a replica's replay position) passes each batch's
/// `visible_from`, recording what it was asked.
struct PositionGate {
    replayed: watch::Receiver<u64>,
    asked: Mutex<Vec<u64>>,
}

impl Gate for PositionGate {
    fn wait(
        &self,
        visible_from: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.asked.lock().unwrap().push(visible_from);
        let mut replayed = self.replayed.clone();
        async move {
            let _ = replayed.wait_for(|&at| at >= visible_from).await;
        }
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_gate_holds_batches_until_it_opens_while_the_next_batch_grows() {
    let sink = MemorySink::new("mem");
    let (replay, replayed) = watch::channel(0);
    let gate = Arc::new(PositionGate {
        replayed,
        asked: Mutex::new(Vec::new()),
    });
    let (tx, confirmed, task) = parts(Pipeline::spawn_gated(
        cfg(),
        vec![sink.clone() as Arc<dyn Sink>],
        None,
        Some(gate.clone() as Arc<dyn Gate>),
    ));

    send_tx(&tx, 1, &["k1"]).await;
    eventually("the first batch asked the gate", || {
        gate.asked.lock().unwrap().len() == 1
    })
    .await;
    send_tx(&tx, 2, &["k2"]).await;
    // A transaction that invalidates nothing needs no gate to be acknowledged, but it waits
    // for the batches before it.
    tx.send(begin(3)).await.unwrap();
    tx.send(commit(3)).await.unwrap();
    settle().await;
    assert_eq!(
        sink.calls(),
        0,
        "nothing reaches the sink before the gate opens"
    );
    assert_eq!(*confirmed.borrow(), 0);
    // Replayed up to the commit record's start: not yet past it.
    replay.send_replace(lsn(1));
    settle().await;
    assert_eq!(sink.calls(), 0);

    // Past the end of its commit record.
    replay.send_replace(lsn(1) + 8);
    eventually("the first batch published", || sink.calls() >= 1).await;
    eventually("the second batch asked the gate", || {
        gate.asked.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(sink.calls(), 1, "the second batch waits for its own commit");
    assert_eq!(*confirmed.borrow(), lsn(1) + 8);

    // The second batch completes transaction 3 too, so it waits for that commit.
    replay.send_replace(lsn(3) + 8);
    eventually("all confirmed", || *confirmed.borrow() == lsn(3) + 8).await;
    assert_eq!(
        *gate.asked.lock().unwrap(),
        [lsn(1) + 8, lsn(3) + 8],
        "asked with each batch's end, once per batch"
    );
    drop(tx);
    task.await.unwrap().unwrap();
}

/// A sink that applies the quick part of each batch at once and leaves the rest running until
/// the test releases it (one permit per rest); the first rest can be told to fail.
struct StagedSink {
    quick: Mutex<Vec<u64>>,
    settled: Arc<Mutex<Vec<u64>>>,
    release: Arc<Semaphore>,
    fail_first_rest: std::sync::atomic::AtomicBool,
}

impl StagedSink {
    fn new(fail_first_rest: bool) -> Arc<Self> {
        Arc::new(Self {
            quick: Mutex::new(Vec::new()),
            settled: Arc::new(Mutex::new(Vec::new())),
            release: Arc::new(Semaphore::new(0)),
            fail_first_rest: fail_first_rest.into(),
        })
    }
}

impl Sink for StagedSink {
    fn name(&self) -> &'static str {
        "staged"
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        crate::sink::settled(self.publish_staged(batch))
    }

    fn publish_staged<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Option<Settling>, SinkError>> {
        async move {
            self.quick.lock().unwrap().push(batch.lsn);
            let (release, settled, lsn) = (self.release.clone(), self.settled.clone(), batch.lsn);
            let fail = self.fail_first_rest.swap(false, Ordering::SeqCst);
            let rest: Settling = async move {
                release.acquire().await.unwrap().forget();
                if fail {
                    return Err(SinkError::new(SinkErrorKind::Connect, "walk failed"));
                }
                settled.lock().unwrap().push(lsn);
                Ok(())
            }
            .boxed();
            Ok(Some(rest))
        }
        .boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_settling_batch_frees_its_slot_but_holds_the_acknowledgement() {
    let sink = StagedSink::new(true);
    let (tx, confirmed, task) = parts(Pipeline::spawn(cfg(), vec![sink.clone() as Arc<dyn Sink>]));

    send_tx(&tx, 1, &["k1"]).await;
    eventually("first batch applied", || {
        sink.quick.lock().unwrap().len() == 1
    })
    .await;
    send_tx(&tx, 2, &["k2"]).await;
    eventually("second batch applied while the first settles", || {
        sink.quick.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        *confirmed.borrow(),
        0,
        "nothing acknowledged while batch 1 settles"
    );

    // The first permit goes to batch 1's rest, which fails: batch 1 is published again, whole.
    sink.release.add_permits(1);
    eventually("batch 1 published again", || {
        sink.quick.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(*confirmed.borrow(), 0);
    assert_eq!(sink.quick.lock().unwrap()[2], lsn(1));
    sink.release.add_permits(2);
    eventually("both confirmed", || *confirmed.borrow() == lsn(2) + 8).await;
    let mut settled = sink.settled.lock().unwrap().clone();
    settled.sort_unstable();
    assert_eq!(settled, [lsn(1), lsn(2)]);
    drop(tx);
    task.await.unwrap().unwrap();
}

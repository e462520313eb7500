//! `walbust run`: wires the source, the rules, the pipeline and the sinks.
//!
//! Start-up order is chosen so that every check that can fail does so before
//! anything is created or streamed: rules load, sinks answer their health
//! check, then the database is checked (and the publication and slot created
//! when asked; in binary mode the renderings are checked before the slot is
//! created). Only then does streaming start.
//!
//! Each step that needs a service waits for it while it is still coming up
//! ([`until_ready`]: backoff, a log line and `walbust_startup_waits_total`
//! per attempt), and stops at once on a definite refusal, classified as
//! everywhere else: [`walbust_cdc::StreamError::is_transient`] for
//! Postgres, [`walbust_publish::SinkError::retriable`] for the sinks.

use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use walbust_flow::{Backoff, Chain};
use walbust_publish::http_sink::HttpSink;
use walbust_publish::kafka_sink::KafkaSink;
use walbust_publish::redis_sink::RedisSink;
use walbust_publish::{BatchObserver, Pipeline, PipelineHandle, Sink};
use walbust_rules::RuleSet;

use crate::config::Config;

/// Optional observers for live views (the demo).
#[derive(Default, Clone)]
pub struct Hooks {
    pub tap: Option<walbust_cdc::ChangeTap>,
    pub observer: Option<BatchObserver>,
    /// Told once streaming started (slot held, pipeline running).
    pub started: Option<Arc<tokio::sync::Notify>>,
}

/// Runs until `shutdown` turns true, then finishes the batch in flight,
/// acknowledges it and returns.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>, hooks: Hooks) -> Result<()> {
    let rules = Arc::new(RuleSet::load(&cfg.rules)?);
    crate::check::rule_problems(&cfg, &rules).map_err(anyhow::Error::msg)?;
    tracing::info!(rules = rules.rules().len(), file = %cfg.rules.display(), "rules loaded");
    // Watch the rules file (and SIGHUP) from right after loading it, so that
    // no edit falls between the two; the reader takes a new set at its next
    // transaction boundary. The guard stops the watcher however run returns.
    let (rules_tx, rules_rx) = watch::channel(rules.clone());
    // What the reader actually took: a refused reload falls back to it.
    let (in_effect_tx, in_effect_rx) = watch::channel(rules.clone());
    let _reloader = crate::reload::WatcherGuard(
        crate::reload::Reloader::new(
            cfg.rules.clone(),
            Some(crate::reload::PublicationCheck {
                url: cfg.source.url.clone(),
                publication: cfg.source.publication.clone(),
            }),
        )
        .with_in_effect(in_effect_rx)
        .with_validate({
            let cfg = cfg.clone();
            Box::new(move |set| crate::check::rule_problems(&cfg, set).err())
        })
        .spawn(rules_tx, shutdown.clone()),
    );

    let Some(sinks) = connect_sinks(&cfg, Some(&shutdown)).await? else {
        return Ok(());
    };
    let names: Vec<&'static str> = sinks.iter().map(|s| s.name()).collect();
    walbust_publish::metrics::register_counters(&names);
    for sink in &sinks {
        // Healthy, then made ready (the Redis functions library): the
        // preparation's own errors say what needs it.
        let ready = until_ready(Some(&shutdown), sink.name(), || async {
            sink.health().await.map_err(Attempt::sink)?;
            sink.prepare().await.map_err(Attempt::sink)
        })
        .await
        .with_context(|| format!("sink {} is not ready", sink.name()))?;
        if ready.is_none() {
            return Ok(());
        }
    }
    let _probes = ProbeGuard(spawn_probes(&sinks));
    let scheduling = {
        let in_effect = rules_rx.clone();
        move || in_effect.borrow().rules().iter().any(|r| !r.at.is_empty())
    };
    let _applier = match spawn_applier(&cfg, &sinks, &shutdown, scheduling).await? {
        Some(applier) => ProbeGuard(applier),
        None => return Ok(()),
    };

    let spec = walbust_cdc::SourceSpec {
        url: cfg.source.url.clone(),
        publication: cfg.source.publication.clone(),
        slot: cfg.source.slot.clone(),
        create: cfg.source.create,
        failover: cfg.source.failover,
    };
    // Before the slot may be created: a new slot must not paper over a gap.
    if crate::gap::guard(&cfg, &rules, &sinks, &shutdown)
        .await?
        .is_none()
    {
        return Ok(());
    }

    // One gate for the whole run: its pollers keep their connections across
    // the restarts of the loop below.
    let gate = replica_gate(&cfg);

    // A gap found while streaming (see `restart_after_gap`) sends walbust
    // round this loop once more, purging once the slot it resumes on exists.
    let mut purge_first = false;
    loop {
        let rules = rules_rx.borrow().clone();
        let Some((slot, system)) = prepare_source(&cfg, &spec, &rules, &shutdown).await? else {
            return Ok(());
        };
        if purge_first {
            // After the new slot exists: every change it does not hold was
            // committed before the purge, so nothing can be re-cached stale.
            crate::gap::purge(&cfg, &rules, &sinks).await?;
        }
        crate::gap::mark_db(&cfg, &system).await;
        let marker = crate::gap::mark(&cfg, system).await?;
        let _keeper = marker.as_ref().map(crate::gap::MarkerHandle::keep_present);
        tracing::info!(
            slot = %cfg.source.slot,
            lsn = %walbust_pgoutput::format_lsn(slot.confirmed_flush_lsn),
            wal_status = %slot.wal_status,
            created = slot.created,
            "slot ready"
        );

        let PipelineHandle {
            feed,
            task: pipeline,
        } = Pipeline::spawn_gated(
            walbust_publish::PipelineConfig {
                slot: cfg.source.slot.clone(),
                ..cfg.publish.pipeline()
            },
            sinks.clone(),
            hooks.observer.clone(),
            gate.clone(),
        );

        let stream = walbust_cdc::StreamSpec {
            conn: walbust_cdc::ConnParams::from_url(&cfg.source.url)?,
            slot: cfg.source.slot.clone(),
            publication: cfg.source.publication.clone(),
            status_interval: cfg.status_interval(),
            application_name: cfg.source.application_name.clone(),
            temporary_slot: false,
            binary: cfg.source.binary,
        };
        let mut reader = walbust_cdc::Reader::new(stream, rules_rx.clone())
            .with_explicit_policy(cfg.explicit.policy())
            .with_checks(spec.clone())
            .with_in_effect(in_effect_tx.clone())
            .with_window_guard(
                cfg.source.on_gap == crate::config::OnGap::Purge,
                cfg.source.gap_purge.invalidations(),
            );
        if cfg.source.heartbeat_interval_ms > 0 {
            reader = reader.with_heartbeat(Duration::from_millis(cfg.source.heartbeat_interval_ms));
        }
        if let Some(marker) = &marker {
            reader = reader
                .with_on_stream(marker.on_stream())
                .with_ack_fence(marker.on_ack());
        }
        if let Some(tap) = hooks.tap.clone() {
            reader = reader.with_tap(tap);
        }
        if let Some(started) = &hooks.started {
            started.notify_one();
        }
        let outcome = reader.run(feed, shutdown.clone()).await;
        let stopped = match outcome {
            Ok(stopped) => stopped,
            // The pipeline ended first: its error is the one to report.
            Err(walbust_cdc::StreamError::PipelineClosed) => {
                pipeline_outcome(pipeline.await)?;
                anyhow::bail!("publishing pipeline stopped");
            }
            // Nothing unconfirmed was acknowledged, so the pipeline's work can be
            // dropped: the server sends it again on the next start.
            Err(e) => {
                pipeline.abort();
                if restart_after_gap(&cfg, &spec, &shutdown, &e).await? {
                    purge_first = true;
                    continue;
                }
                return Err(e.into());
            }
        };
        // The reader closed the pipeline's input and waited for its last
        // confirmation; collect the task's result.
        pipeline_outcome(pipeline.await)?;
        let walbust_cdc::Stopped::Shutdown { confirmed_lsn } = stopped;
        crate::gap::record_stop(marker.as_ref(), confirmed_lsn).await;
        tracing::info!(slot = %cfg.source.slot, lsn = %walbust_pgoutput::format_lsn(confirmed_lsn), "stopped");
        return Ok(());
    }
}

/// Starts the applier of scheduled invalidations (`at:`) when a Redis sink
/// holds the schedule, on a connection of its own: entries past due (walbust
/// was down at their time) are applied at once. `None` when shutdown was
/// requested meanwhile; a task that does nothing without Redis.
async fn spawn_applier(
    cfg: &Config,
    sinks: &[Arc<dyn Sink>],
    shutdown: &watch::Receiver<bool>,
    active: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(redis) = &cfg.sinks.redis else {
        return Ok(Some(tokio::spawn(async {})));
    };
    let connect = || async {
        RedisSink::connect(redis.clone())
            .await
            .map(|sink| sink.with_slot(&cfg.source.slot))
            .map_err(Attempt::sink)
    };
    let Some(store) = until_ready(Some(shutdown), "redis", connect)
        .await
        .context("sink redis (schedule)")?
    else {
        return Ok(None);
    };
    let pipeline = cfg.publish.pipeline();
    let applier = walbust_publish::schedule::Applier::new(
        Arc::new(store),
        sinks.to_vec(),
        Backoff {
            min: pipeline.retry_min,
            max: pipeline.retry_max,
        },
        cfg.source.slot.clone(),
    )
    .with_active(active);
    Ok(Some(tokio::spawn(applier.run(shutdown.clone()))))
}

/// The gate of `source.replicas`, none without replicas.
fn replica_gate(cfg: &Config) -> Option<Arc<dyn walbust_flow::Gate>> {
    let specs = cfg.replica_specs();
    if specs.is_empty() {
        return None;
    }
    let names: Vec<&str> = specs.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(
        replicas = ?names,
        max_wait_ms = cfg.source.replica_wait_max_ms,
        "batches wait for the read replicas to replay them"
    );
    Some(Arc::new(walbust_cdc::ReplicaGate::start(
        &specs,
        cfg.replica_wait_max(),
    )))
}

/// Checks the database, creating the publication and the slot when asked;
/// returns the slot and the server's system identifier, `None` when
/// shutdown was requested meanwhile.
pub(crate) async fn prepare_source(
    cfg: &Config,
    spec: &walbust_cdc::SourceSpec,
    rules: &RuleSet,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<(walbust_cdc::SlotState, String)>> {
    let tables = rules.tables();
    until_ready(Some(shutdown), "postgres", || async {
        let checked = async {
            let source = walbust_cdc::StreamError::Source;
            let control = walbust_cdc::source::connect(&spec.url)
                .await
                .map_err(source)?;
            // A replication connection, as streaming will open, before
            // anything is created: a role without REPLICATION (or a
            // pg_hba.conf that refuses it) stops here.
            let system = crate::gap::system_identifier(cfg).await?;
            // Before walbust's own publication changes, so that they are
            // in the WAL for the guard's judgement too.
            ensure_ddl_guard(&control, cfg.source.create).await;
            walbust_cdc::source::prepare_publication(&control, spec, &tables)
                .await
                .map_err(source)?;
            // Before the slot is created: a refused start must not leave a
            // new slot behind, holding WAL.
            walbust_cdc::source::check_sends(&control, &spec.publication, rules)
                .await
                .map_err(source)?;
            if let Some(publication) =
                walbust_cdc::catalog::publication(&control, &spec.publication)
                    .await
                    .map_err(source)?
            {
                walbust_cdc::source::check_columns(&control, &publication, rules)
                    .await
                    .map_err(source)?;
            }
            if cfg.source.binary {
                walbust_cdc::relations::check_binary(&control, &spec.publication, rules).await?;
            }
            let slot = walbust_cdc::source::prepare_slot(&control, spec)
                .await
                .map_err(source)?;
            Ok((slot, system))
        };
        checked.await.map_err(Attempt::stream)
    })
    .await
}

/// Gaps found while streaming, repaired with `source.on_gap: purge` (true:
/// start over, purging once the slot exists); otherwise the error stands.
///
/// - A slot found ahead of what walbust acknowledged was dropped and made
///   again (or advanced) behind its back: the changes in between are lost,
///   the slot itself is fine to resume on.
/// - A publication dropped while the slot needed it leaves the slot stuck
///   for good: Postgres decodes each change with the catalog of its time,
///   so the slot fails on the first change made while the publication was
///   missing, however often walbust reconnects. Only a new slot helps, and
///   the changes the old one held are lost; with `source.create: true` the
///   old slot is dropped here.
async fn restart_after_gap(
    cfg: &Config,
    spec: &walbust_cdc::SourceSpec,
    shutdown: &watch::Receiver<bool>,
    error: &walbust_cdc::StreamError,
) -> Result<bool> {
    use walbust_cdc::SourceError::{PublicationDropped, SlotAhead};
    let walbust_cdc::StreamError::Source(gap @ (PublicationDropped { .. } | SlotAhead { .. })) =
        error
    else {
        return Ok(false);
    };
    if cfg.source.on_gap != crate::config::OnGap::Purge {
        return Ok(false);
    }
    if let SlotAhead { .. } = gap {
        tracing::warn!(slot = %spec.slot, error = %Chain(error), "gap in the change stream: purging everything the rules cover, then resuming on the slot");
        return Ok(true);
    }
    if !cfg.source.create {
        return Ok(false);
    }
    tracing::warn!(slot = %spec.slot, publication = %spec.publication, error = %Chain(error), "gap in the change stream: replacing the slot and purging everything the rules cover");
    let dropped = until_ready(Some(shutdown), "postgres", || async {
        let dropped = async {
            let control = walbust_cdc::source::connect(&spec.url).await?;
            walbust_cdc::source::drop_slot(&control, spec).await
        };
        dropped
            .await
            .map_err(|e| Attempt::stream(walbust_cdc::StreamError::Source(e)))
    })
    .await?;
    Ok(dropped.is_some())
}

/// Looks for the DDL guard (see `walbust_cdc::window`), installing it with
/// `create` (`source.create: true`) where the role may; warns without it,
/// since a table withheld from the publication and restored between two
/// checks then goes unseen.
async fn ensure_ddl_guard(control: &tokio_postgres::Client, create: bool) {
    let installed = match walbust_cdc::source::ddl_guard_installed(control).await {
        Ok(false) if create => match walbust_cdc::source::install_ddl_guard(control).await {
            Ok(()) => {
                tracing::info!(
                    trigger = walbust_cdc::window::GUARD_TRIGGER,
                    "installed the DDL guard"
                );
                true
            }
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "could not install the DDL guard");
                false
            }
        },
        Ok(installed) => installed,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "could not look up the DDL guard");
            false
        }
    };
    metrics::gauge!(walbust_cdc::metrics::DDL_GUARD_INSTALLED).set(if installed {
        1.0
    } else {
        0.0
    });
    if !installed {
        tracing::warn!(
            trigger = walbust_cdc::window::GUARD_TRIGGER,
            "the DDL guard is not installed: a table taken out of the publication (or renamed) and put back between two publication checks goes unseen; a superuser installs it with deploy/postgres-setup.sql"
        );
    }
}

/// One attempt of a start-up step: retry later, or give up.
pub enum Attempt {
    Retry(anyhow::Error),
    Fail(anyhow::Error),
}

impl Attempt {
    /// A Postgres failure: retried while transient (the server starting,
    /// a connection refused or cut), final when definite (authentication,
    /// privileges, wal_level...), the classification `walbust tail` and a
    /// running stream use too.
    pub fn stream(e: walbust_cdc::StreamError) -> Attempt {
        if e.is_transient() {
            Attempt::Retry(e.into())
        } else {
            Attempt::Fail(e.into())
        }
    }

    /// A sink failure: retried when retrying can help (see
    /// [`walbust_publish::SinkErrorKind::retriable`]).
    pub fn sink(e: walbust_publish::SinkError) -> Attempt {
        if e.retriable() {
            Attempt::Retry(e.into())
        } else {
            Attempt::Fail(e.into())
        }
    }
}

/// Repeats a start-up step with exponential backoff and jitter while it
/// fails transiently (a database or sink still starting), logging what it
/// waits for and counting each wait in `walbust_startup_waits_total{what}`.
/// `None` when shutdown was requested meanwhile. Without `shutdown` the
/// step is made once (`walbust check` reports rather than waits).
pub async fn until_ready<T, F, Fut>(
    shutdown: Option<&watch::Receiver<bool>>,
    what: &'static str,
    mut step: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let mut delays = Backoff::RECONNECT.delays();
    loop {
        match step().await {
            Ok(v) => return Ok(Some(v)),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                walbust_flow::health().set_stream(walbust_flow::health::Stream::Starting {
                    waiting_for: Some(what.to_string()),
                });
                let Some(shutdown) = shutdown else {
                    return Err(e);
                };
                let mut shutdown = shutdown.clone();
                let delay = delays.next().unwrap_or(Backoff::RECONNECT.max);
                metrics::counter!(crate::metrics::STARTUP_WAITS, "what" => what).increment(1);
                tracing::warn!(
                    what,
                    error = %Chain(e.as_ref()),
                    retry_in_ms = delay.as_millis() as u64,
                    "waiting for {what}, which is not ready yet"
                );
                tokio::select! {
                    signalled = async { shutdown.wait_for(|v| *v).await.is_ok() } => {
                        if signalled {
                            return Ok(None);
                        }
                        // No one can signal any more: just wait out the delay.
                        tokio::time::sleep(delay).await;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Asks every sink whether it answers (PING, metadata) every
/// [`PROBE_EVERY`](crate::telemetry::PROBE_EVERY), for `/readyz`: an idle
/// walbust publishes nothing, so only a probe notices a sink that went away.
fn spawn_probes(sinks: &[Arc<dyn Sink>]) -> tokio::task::JoinHandle<()> {
    let health = walbust_flow::health();
    for sink in sinks {
        health.register_sink(sink.name());
    }
    let sinks = sinks.to_vec();
    tokio::spawn(async move {
        let every = crate::telemetry::PROBE_EVERY;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for sink in &sinks {
                let answer = match tokio::time::timeout(every, sink.health()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Chain(&e).to_string()),
                    Err(_) => Err(format!("no answer within {} s", every.as_secs())),
                };
                health.probed(sink.name(), answer);
            }
        }
    })
}

/// Stops the sink probes when `run` returns.
struct ProbeGuard(tokio::task::JoinHandle<()>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn pipeline_outcome(
    joined: Result<Result<(), walbust_publish::PipelineError>, tokio::task::JoinError>,
) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("publishing pipeline failed"),
        Err(e) => Err(e).context("publishing pipeline panicked"),
    }
}

/// Connects every configured sink (no publishing yet), once.
pub async fn build_sinks(cfg: &Config) -> Result<Vec<Arc<dyn Sink>>> {
    Ok(connect_sinks(cfg, None).await?.unwrap_or_default())
}

/// Connects every configured sink; with `shutdown`, waits for a sink that
/// is still coming up ([`until_ready`]), `None` when shutdown was requested
/// meanwhile.
async fn connect_sinks(
    cfg: &Config,
    shutdown: Option<&watch::Receiver<bool>>,
) -> Result<Option<Vec<Arc<dyn Sink>>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(redis) = &cfg.sinks.redis {
        let connect = || async {
            RedisSink::connect(redis.clone())
                .await
                .map(|sink| sink.with_slot(&cfg.source.slot))
                .map_err(Attempt::sink)
        };
        let sink = until_ready(shutdown, "redis", connect)
            .await
            .context("sink redis")?;
        let Some(sink) = sink else {
            return Ok(None);
        };
        sinks.push(Arc::new(sink));
    }
    if let Some(kafka) = &cfg.sinks.kafka {
        let sink = KafkaSink::new(kafka.clone(), &cfg.source.slot).context("sink kafka")?;
        sinks.push(Arc::new(sink));
    }
    if let Some(http) = &cfg.sinks.http {
        let sink = HttpSink::new(http.clone()).context("sink http")?;
        sinks.push(Arc::new(sink));
    }
    if cfg.sinks.discard.is_some() {
        sinks.push(Arc::new(walbust_publish::discard_sink::DiscardSink));
    }
    Ok(Some(sinks))
}

//! `walbust run`: wires the source, the rules, the pipeline and the sinks.
//!
//! Start-up order is chosen so that every check that can fail does so before
//! anything is created or streamed: rules load, sinks answer their health
//! check, then the database is checked (and the publication and slot created
//! when asked). Only then does streaming start.

use std::sync::Arc;

use anyhow::{Context, Result};
use publish::kafka_sink::KafkaSink;
use publish::redis_sink::RedisSink;
use publish::{BatchObserver, Pipeline, Sink};
use rules::RuleSet;
use tokio::sync::watch;

use crate::config::Config;

/// Optional observers for live views (the demo).
#[derive(Default, Clone)]
pub struct Hooks {
    pub tap: Option<cdc::ChangeTap>,
    pub observer: Option<BatchObserver>,
    /// Told once streaming started (slot held, pipeline running).
    pub started: Option<Arc<tokio::sync::Notify>>,
}

/// Runs until `shutdown` turns true, then finishes the batch in flight,
/// acknowledges it and returns.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>, hooks: Hooks) -> Result<()> {
    let rules = Arc::new(RuleSet::load(&cfg.rules)?);
    tracing::info!(rules = rules.rules().len(), file = %cfg.rules.display(), "rules loaded");

    let sinks = build_sinks(&cfg).await?;
    for sink in &sinks {
        sink.health()
            .await
            .with_context(|| format!("sink {} is not healthy", sink.name()))?;
    }

    let control = cdc::source::connect(&cfg.source.url).await?;
    let spec = cdc::SourceSpec {
        url: cfg.source.url.clone(),
        publication: cfg.source.publication.clone(),
        slot: cfg.source.slot.clone(),
        create: cfg.source.create,
    };
    let slot = cdc::source::prepare(&control, &spec, &rules.tables()).await?;
    tracing::info!(
        slot = %cfg.source.slot,
        confirmed_flush_lsn = %pgoutput::format_lsn(slot.confirmed_flush_lsn),
        wal_status = %slot.wal_status,
        created = slot.created,
        "slot ready"
    );
    drop(control);

    let (items, confirmed, pipeline) =
        Pipeline::spawn_with_observer(cfg.publish.pipeline(), sinks, hooks.observer.clone());

    let stream = cdc::StreamSpec {
        conn: cdc::ConnParams::from_url(&cfg.source.url)?,
        slot: cfg.source.slot.clone(),
        publication: cfg.source.publication.clone(),
        status_interval: cfg.status_interval(),
        application_name: cfg.source.application_name.clone(),
        temporary_slot: false,
    };
    let (rules_tx, rules_rx) = watch::channel(rules);
    let mut reader = cdc::Reader::new(stream, rules_rx);
    if let Some(tap) = hooks.tap.clone() {
        reader = reader.with_tap(tap);
    }
    if let Some(started) = &hooks.started {
        started.notify_one();
    }
    let outcome = reader.run(items, confirmed, shutdown).await;
    drop(rules_tx);
    let stopped = match outcome {
        Ok(stopped) => stopped,
        // The pipeline ended first: its error is the one to report.
        Err(cdc::StreamError::PipelineClosed) => {
            pipeline_outcome(pipeline.await)?;
            anyhow::bail!("publishing pipeline stopped");
        }
        // Nothing unconfirmed was acknowledged, so the pipeline's work can be
        // dropped: the server sends it again on the next start.
        Err(e) => {
            pipeline.abort();
            return Err(e.into());
        }
    };
    // The reader closed the pipeline's input and waited for its last
    // confirmation; collect the task's result.
    pipeline_outcome(pipeline.await)?;
    let cdc::Stopped::Shutdown { confirmed_lsn } = stopped;
    tracing::info!(confirmed_lsn = %pgoutput::format_lsn(confirmed_lsn), "stopped");
    Ok(())
}

fn pipeline_outcome(
    joined: Result<Result<(), publish::PipelineError>, tokio::task::JoinError>,
) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("publishing pipeline failed"),
        Err(e) => Err(e).context("publishing pipeline panicked"),
    }
}

/// Connects every configured sink (no publishing yet).
pub async fn build_sinks(cfg: &Config) -> Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(redis) = &cfg.sinks.redis {
        let sink = RedisSink::connect(redis.clone())
            .await
            .context("sink redis")?;
        sinks.push(Arc::new(sink));
    }
    if let Some(kafka) = &cfg.sinks.kafka {
        let sink = KafkaSink::new(kafka.clone(), &cfg.source.slot).context("sink kafka")?;
        sinks.push(Arc::new(sink));
    }
    Ok(sinks)
}

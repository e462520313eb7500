//! `walbust check`: validate before running.
//!
//! Offline it loads the configuration and the rules exactly as `run` does.
//! With `--db` it also asks the database and the sinks, read-only: it never
//! creates the publication or the slot, it says whether `run` would.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::{fail, fail_config, run};

pub async fn check(path: &Path, db: bool) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return fail_config(e),
    };
    let rules = match rules::RuleSet::load(&cfg.rules) {
        Ok(r) => r,
        Err(e) => return fail_config(e),
    };
    let tables: Vec<String> = rules.tables().iter().map(|t| t.to_string()).collect();
    println!(
        "ok: {} valid; {} rules over {} ({})",
        path.display(),
        rules.rules().len(),
        cfg.rules.display(),
        if tables.is_empty() {
            "no exact tables".to_string()
        } else {
            tables.join(", ")
        }
    );
    if !db {
        return ExitCode::SUCCESS;
    }

    let sinks = match run::build_sinks(&cfg).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    for sink in &sinks {
        if let Err(e) = sink.health().await {
            return fail(anyhow::Error::new(e).context(format!("sink {}", sink.name())));
        }
        println!("ok: sink {} is healthy", sink.name());
    }

    let client = match cdc::source::connect(&cfg.source.url).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let spec = cdc::SourceSpec {
        url: cfg.source.url.clone(),
        publication: cfg.source.publication.clone(),
        slot: cfg.source.slot.clone(),
        create: false,
    };
    match cdc::source::prepare(&client, &spec, &rules.tables()).await {
        Ok(slot) => {
            println!(
                "ok: database ready: publication {} covers the rules' tables, slot {} at {} (wal_status {})",
                cfg.source.publication,
                cfg.source.slot,
                pgoutput::format_lsn(slot.confirmed_flush_lsn),
                slot.wal_status
            );
            ExitCode::SUCCESS
        }
        Err(
            e @ (cdc::SourceError::PublicationMissing { .. }
            | cdc::SourceError::TablesNotPublished { .. }
            | cdc::SourceError::SlotMissing { .. }),
        ) if cfg.source.create => {
            println!("ok: database reachable; `walbust run` will create what is missing ({e})");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

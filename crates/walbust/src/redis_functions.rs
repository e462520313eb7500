//! `walbust redis-functions`: prints the Redis Functions library `walbust` (fenced fills and
//! read-your-writes, README "Fenced fills") for operators who load it themselves, with
//! `redis-cli -x FUNCTION LOAD REPLACE < walbust.lua`.
//!
//! The library carries two settings of `sinks.redis`: `lease_ttl_ms` and the tag strategy
//! (what `walbust_get` does with tag keys). With `--config` they are read from that file
//! (offline: an unset `${VAR}` reads as its name, noted on stderr); without it, the defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use walbust_publish::redis_sink::RedisSinkConfig;

use crate::config::Config;
use crate::fail_config;

#[derive(clap::Args)]
pub struct RedisFunctionsArgs {
    /// Take lease_ttl_ms and tag_strategy from this file's sinks.redis.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub fn redis_functions(args: RedisFunctionsArgs) -> ExitCode {
    let redis = match &args.config {
        None => RedisSinkConfig::new("redis://localhost"),
        Some(path) => {
            let (cfg, unset) = match Config::load_offline(path) {
                Ok(loaded) => loaded,
                Err(e) => return fail_config(e),
            };
            for var in &unset {
                eprintln!("note: {var}");
            }
            match cfg.sinks.redis {
                Some(redis) => redis,
                None => {
                    return fail_config(format!(
                        "{}: sinks.redis: not configured, so no settings to print the library with",
                        path.display()
                    ))
                }
            }
        }
    };
    print!("{}", redis.library());
    ExitCode::SUCCESS
}

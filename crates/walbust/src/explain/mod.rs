//! `walbust explain`: what one row change would invalidate, and which rule
//! says so. No database, no sink: the rules file and the values given.
//!
//! # Map
//!
//! | module | role |
//! |---|---|
//! | `args` | the command line: [`ExplainArgs`], the rules file it names, `--old` and `--new` read into a change |
//! | `report` | the change evaluated against the rules, attributed rule by rule, and printed as text or JSON |
//!
//! The two meet only in [`explain`]: the report knows nothing of flags or
//! files, so it is tested on a rules string and a change built in the test.

mod args;
mod report;

use std::process::ExitCode;

pub(crate) use args::parse_table;
pub use args::ExplainArgs;

use crate::fail_config;

pub fn explain(args: ExplainArgs) -> ExitCode {
    let (set, change) = match args.load() {
        Ok(loaded) => loaded,
        Err(e) => return fail_config(e),
    };
    let report = match report::evaluate(&set, &change) {
        Ok(r) => r,
        Err(e) => return fail_config(e),
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}

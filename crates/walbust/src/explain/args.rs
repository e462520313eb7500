//! The command line of `walbust explain`: which rules file, and the change
//! to explain.
//!
//! Values are given as JSON objects of column to text (as Postgres prints
//! it) or null. A column missing from `--old` was not sent by the replica
//! identity; a column missing from `--new` of an update is an unchanged
//! TOASTed value. Every problem is one line, naming the flag.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::Value;
use walbust_rules::{Op, RuleSet, TableName};

use crate::config::Config;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The configuration file; its `rules` file is used (nothing is
    /// connected).
    #[arg(
        long,
        short,
        conflicts_with = "rules",
        required_unless_present = "rules"
    )]
    config: Option<PathBuf>,
    /// A rules file, instead of --config.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The table: `schema.table`, or `table` for `public.table`.
    #[arg(long)]
    table: String,
    /// The operation.
    #[arg(long, value_enum)]
    op: OpArg,
    /// The old row as a JSON object of column to text value or null, e.g.
    /// '{"id":"42","category_id":"3"}'. Leave out the columns the replica
    /// identity does not send; leave the option out for an update whose
    /// old row Postgres does not send.
    #[arg(long)]
    old: Option<String>,
    /// The new row, as --old. In an update, a column left out is an
    /// unchanged TOASTed value (Postgres does not resend it).
    #[arg(long)]
    new: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OpArg {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl From<OpArg> for Op {
    fn from(op: OpArg) -> Op {
        match op {
            OpArg::Insert => Op::Insert,
            OpArg::Update => Op::Update,
            OpArg::Delete => Op::Delete,
            OpArg::Truncate => Op::Truncate,
        }
    }
}

impl ExplainArgs {
    /// The rules file and the change, in this order, so that a broken
    /// rules file is reported before a bad row.
    pub(super) fn load(&self) -> Result<(RuleSet, Change), String> {
        let path = rules_path(self)?;
        // Read here rather than by `RuleSet::load`, whose one-line error
        // leaves out the I/O cause.
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read the rules file: {e}", path.display()))?;
        let set =
            RuleSet::from_yaml(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
        let change = Change::from_args(self)?;
        Ok((set, change))
    }
}

fn rules_path(args: &ExplainArgs) -> Result<PathBuf, String> {
    match (&args.rules, &args.config) {
        (Some(rules), _) => Ok(rules.clone()),
        // Only the rules path is used: secrets need not be set.
        (None, Some(config)) => Config::load_offline(config)
            .map(|(c, _)| c.rules)
            .map_err(|e| walbust_flow::Chain(&e).to_string()),
        (None, None) => Err("give --config or --rules".to_owned()),
    }
}

/// A row value as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Given {
    Text(String),
    Null,
}

/// The change to explain, parsed from the arguments.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) table: TableName,
    pub(super) op: Op,
    pub(super) old: Option<Vec<(String, Given)>>,
    pub(super) new: Option<Vec<(String, Given)>>,
}

impl Change {
    fn from_args(args: &ExplainArgs) -> Result<Change, String> {
        let table = parse_table(&args.table)?;
        let op = Op::from(args.op);
        let old = args
            .old
            .as_deref()
            .map(|j| parse_row("--old", j))
            .transpose()?;
        let new = args
            .new
            .as_deref()
            .map(|j| parse_row("--new", j))
            .transpose()?;
        match op {
            Op::Insert if old.is_some() => return Err("--old: an insert has no old row".into()),
            Op::Insert if new.is_none() => return Err("--new: an insert needs the new row".into()),
            Op::Update if new.is_none() => return Err("--new: an update needs the new row".into()),
            Op::Delete if new.is_some() => return Err("--new: a delete has no new row".into()),
            Op::Delete if old.is_none() => {
                return Err("--old: a delete needs the old row (at least its key columns)".into())
            }
            Op::Truncate if old.is_some() || new.is_some() => {
                return Err("a truncate has no rows: leave out --old and --new".into())
            }
            _ => {}
        }
        Ok(Change {
            table,
            op,
            old,
            new,
        })
    }

    /// Every column named in `--old` or `--new`, each once.
    pub(super) fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for row in [&self.old, &self.new].into_iter().flatten() {
            for (name, _) in row {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        out
    }
}

/// `products` → `public.products`; `shop.items` as is (the rules' reading).
pub(crate) fn parse_table(text: &str) -> Result<TableName, String> {
    let (schema, name) = text.split_once('.').unwrap_or(("public", text));
    if schema.is_empty() || name.is_empty() || name.contains('.') {
        return Err(format!(
            "--table: {text:?} is not `schema.table` or `table`"
        ));
    }
    Ok(TableName::new(schema, name))
}

pub(super) fn parse_row(flag: &str, text: &str) -> Result<Vec<(String, Given)>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("{flag}: not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err(format!(
            "{flag}: expected a JSON object of column to value, like {{\"id\":\"42\"}}"
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (column, v) in map {
        let given = match v {
            Value::String(s) => Given::Text(s),
            Value::Null => Given::Null,
            // A JSON number is what Postgres prints for numeric types.
            Value::Number(n) => Given::Text(n.to_string()),
            Value::Bool(_) => {
                return Err(format!(
                "{flag}: column {column:?}: write booleans as Postgres prints them, \"t\" or \"f\""
            ))
            }
            _ => {
                return Err(format!(
                "{flag}: column {column:?}: a value is a string (the text Postgres prints) or null"
            ))
            }
        };
        out.push((column, given));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_checked() {
        assert!(parse_row("--new", "[1]")
            .unwrap_err()
            .contains("JSON object"));
        assert!(parse_row("--new", r#"{"a":true}"#)
            .unwrap_err()
            .contains("\"t\""));
        assert_eq!(
            parse_row("--new", r#"{"a":7,"b":null}"#).unwrap(),
            vec![
                ("a".into(), Given::Text("7".into())),
                ("b".into(), Given::Null)
            ]
        );
    }
}

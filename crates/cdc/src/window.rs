//! Windows the publication could not see, found in WAL order.
//!
//! pgoutput sends nothing about a table while it is outside the
//! publication, under another name, or published without an operation the
//! rules react to: `ALTER PUBLICATION p DROP TABLE t; INSERT INTO t ...;
//! ALTER PUBLICATION p ADD TABLE t` leaves no trace of the insert in the
//! stream. A poll of the catalog cannot see such a window once it is
//! closed again. The DDL guard can: an event trigger (see [`GUARD_SQL`])
//! runs after every publication and table DDL statement and emits, inside
//! the statement's transaction, a logical message with prefix
//! [`DDL_PREFIX`] that holds every publication's state as that transaction
//! sees it (its tables as `pg_publication_tables` lists them, and the
//! operations it publishes). The message reaches walbust at the position
//! of the change, so [`WindowGuard`] knows exactly when a table the rules
//! name stopped being sent and when it was sent again:
//!
//! - a state that withholds a rule table **opens** a window at that
//!   transaction; from then on nothing is acknowledged past the start of
//!   that transaction (so a restart or a reconnection reads the opening
//!   message again and rebuilds the window);
//! - a later state that sends every rule table again **closes** it: with
//!   `source.on_gap: purge` the closing transaction carries a purge of
//!   everything the rules of the affected tables cover, and
//!   acknowledgements move on once that transaction was confirmed by every
//!   sink; with `on_gap: refuse` walbust stops with exit status 3 and says
//!   how to get past the window.
//!
//! A window that never closes (a table removed for good) is refused by the
//! publication checks, which find the table missing; the slot then still
//! stands before the window.
//!
//! Only tables named in the rules are judged: tables matched by a `table:`
//! glob come and go (partitions are created and dropped), and for them the
//! periodic publication check is what notices a withheld table.

use std::collections::BTreeSet;

use serde::Deserialize;
use walbust_pgoutput::format_lsn;
use walbust_rules::{Invalidations, Op, RuleSet, TableName};

use crate::error::SourceError;
use crate::metrics as m;

/// Prefix of the DDL guard's logical messages.
pub const DDL_PREFIX: &str = "walbust.ddl";

/// Name of the event trigger that emits them.
pub const GUARD_TRIGGER: &str = "walbust_ddl_guard";

/// Installs the DDL guard: a function in schema `walbust_guard` and an event
/// trigger on the DDL that can change what a publication sends (needs a
/// superuser; `deploy/postgres-setup.sql` holds the same text).
pub const GUARD_SQL: &str = include_str!("ddl_guard.sql");

/// One publication as the guard's message describes it.
#[derive(Debug, Deserialize)]
struct PublishedState {
    name: String,
    #[serde(default)]
    tables: Vec<(String, String)>,
    insert: bool,
    update: bool,
    delete: bool,
    truncate: bool,
}

#[derive(Debug, Deserialize)]
struct GuardMessage {
    v: u32,
    #[serde(default)]
    command: String,
    publications: Vec<PublishedState>,
}

/// A window the publication withheld rule tables for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Commit LSN of the transaction that opened it: nothing is
    /// acknowledged past it until the window is closed and purged.
    opened_at: u64,
    /// The rule tables withheld at some point in the window.
    tables: BTreeSet<TableName>,
    /// The transaction that closed it has been emitted with its purge:
    /// its commit LSN, and its end LSN once committed.
    closed: Option<(u64, Option<u64>)>,
}

/// What [`WindowGuard::message`] asks of the open transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to add.
    Nothing,
    /// A window closed: add these invalidations to the transaction.
    Purge(Invalidations),
}

/// Tracks windows from the DDL guard's messages; see the module docs.
#[derive(Debug)]
pub struct WindowGuard {
    publication: String,
    slot: String,
    purge: bool,
    /// Purged with every closed window besides the rules' coverage
    /// (`source.gap_purge`).
    extra: Invalidations,
    window: Option<Window>,
}

impl WindowGuard {
    /// `purge`: close a window by purging (`on_gap: purge`) rather than
    /// refusing.
    pub fn new(publication: String, slot: String, purge: bool) -> Self {
        WindowGuard {
            publication,
            slot,
            purge,
            extra: Invalidations::default(),
            window: None,
        }
    }

    /// Purges `extra` too whenever a window closes (`source.gap_purge`).
    pub fn with_extra(mut self, extra: Invalidations) -> Self {
        self.extra = extra;
        self
    }

    /// Whether a window is open or not yet confirmed closed.
    pub fn pending(&self) -> bool {
        self.window.is_some()
    }

    /// A guard message of the transaction committing at `commit_lsn`.
    pub fn message(
        &mut self,
        rules: &RuleSet,
        commit_lsn: u64,
        content: &[u8],
    ) -> Result<Verdict, SourceError> {
        let msg: GuardMessage = match serde_json::from_slice::<GuardMessage>(content) {
            Ok(msg) if msg.v == 1 => msg,
            Ok(msg) => {
                metrics::counter!(m::DDL_MESSAGES, m::LABEL_RESULT => m::RESULT_UNKNOWN_VERSION)
                    .increment(1);
                tracing::warn!(lsn = %format_lsn(commit_lsn), version = msg.v, "ignored a DDL guard message of an unknown version (walbust older than the installed guard?)");
                return Ok(Verdict::Nothing);
            }
            Err(e) => {
                metrics::counter!(m::DDL_MESSAGES, m::LABEL_RESULT => m::RESULT_MALFORMED)
                    .increment(1);
                tracing::warn!(lsn = %format_lsn(commit_lsn), reason = %e, "ignored a malformed DDL guard message");
                return Ok(Verdict::Nothing);
            }
        };
        metrics::counter!(m::DDL_MESSAGES, m::LABEL_RESULT => m::RESULT_OK).increment(1);
        let withheld = self.withheld(rules, &msg);
        if !withheld.is_empty() {
            match &mut self.window {
                Some(w) => {
                    w.tables.extend(withheld);
                    // A window opening again after a close replayed or not
                    // yet confirmed keeps the older start: acknowledgements
                    // stay before both.
                    if w.closed.is_some_and(|(at, _)| commit_lsn > at) {
                        w.closed = None;
                    }
                }
                None => {
                    tracing::warn!(
                        lsn = %format_lsn(commit_lsn),
                        command = %msg.command,
                        publication = %self.publication,
                        tables = %list(&withheld),
                        "the publication stopped sending tables the rules name: nothing is acknowledged past this point until they are sent again and their caches purged"
                    );
                    metrics::gauge!(m::DDL_WINDOW_OPEN).set(1.0);
                    self.window = Some(Window {
                        opened_at: commit_lsn,
                        tables: withheld,
                        closed: None,
                    });
                }
            }
            return Ok(Verdict::Nothing);
        }
        let Some(w) = &mut self.window else {
            return Ok(Verdict::Nothing);
        };
        if !self.purge {
            metrics::counter!(m::DDL_WINDOWS, m::LABEL_RESULT => m::RESULT_REFUSED).increment(1);
            return Err(SourceError::UnseenWindow(Box::new(
                crate::error::UnseenWindow {
                    publication: self.publication.clone(),
                    slot: self.slot.clone(),
                    tables: w.tables.iter().map(ToString::to_string).collect(),
                    from: format_lsn(w.opened_at),
                    to: format_lsn(commit_lsn),
                },
            )));
        }
        w.closed = Some((commit_lsn, None));
        let tables: Vec<TableName> = w.tables.iter().cloned().collect();
        let coverage = rules.coverage_of(&tables);
        if !coverage.tag_globs.is_empty() && self.extra.patterns.is_empty() {
            tracing::warn!(tags = ?coverage.tag_globs, "tags with placeholders cannot be enumerated; list their cached keys' patterns in source.gap_purge.patterns");
        }
        tracing::warn!(
            lsn = %format_lsn(commit_lsn),
            from = %format_lsn(w.opened_at),
            tables = %list(&w.tables),
            "the publication sends the rule tables again: purging what their rules cover, for the changes it withheld meanwhile"
        );
        metrics::counter!(m::DDL_WINDOWS, m::LABEL_RESULT => m::RESULT_PURGED).increment(1);
        let mut purge = Invalidations {
            keys: coverage.keys,
            tags: coverage.tags,
            patterns: coverage.patterns,
            ..Default::default()
        };
        purge.extend(self.extra.clone());
        Ok(Verdict::Purge(purge))
    }

    /// The transaction committing at `commit_lsn` ended at `end_lsn`.
    pub fn commit(&mut self, commit_lsn: u64, end_lsn: u64) {
        if let Some(Window {
            closed: Some((at, end @ None)),
            ..
        }) = &mut self.window
        {
            if *at == commit_lsn {
                *end = Some(end_lsn);
            }
        }
    }

    /// How far an acknowledgement of `confirmed` may go: not past an open
    /// window's start, until the transaction that closed it (with its
    /// purge) is confirmed.
    pub fn ack_limit(&mut self, confirmed: u64) -> u64 {
        let Some(w) = &self.window else {
            return confirmed;
        };
        match w.closed {
            Some((_, Some(end))) if confirmed >= end => {
                self.window = None;
                metrics::gauge!(m::DDL_WINDOW_OPEN).set(0.0);
                confirmed
            }
            _ => confirmed.min(w.opened_at),
        }
    }

    /// The rule tables `msg` says our publication does not send in full.
    fn withheld(&self, rules: &RuleSet, msg: &GuardMessage) -> BTreeSet<TableName> {
        let publication = msg.publications.iter().find(|p| p.name == self.publication);
        let mut out = BTreeSet::new();
        for table in rules.tables() {
            let wanted = rules.ops_for(&table.schema, &table.name);
            let sent = publication.is_some_and(|p| {
                let listed = p
                    .tables
                    .iter()
                    .any(|(s, n)| *s == table.schema && *n == table.name);
                let ops_ok = wanted.iter().all(|op| match op {
                    Op::Insert => p.insert,
                    Op::Update => p.update,
                    Op::Delete => p.delete,
                    Op::Truncate => p.truncate,
                });
                listed && ops_ok
            });
            if !sent {
                out.insert(table);
            }
        }
        out
    }
}

fn list(tables: &BTreeSet<TableName>) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet::from_yaml(
            r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
  - table: public.other
    keys: ["other:{id}"]
"#,
            "rules.yaml",
        )
        .unwrap()
    }

    fn state(tables: &[&str], update: bool) -> Vec<u8> {
        let tables: Vec<[&str; 2]> = tables.iter().map(|t| ["public", t]).collect();
        serde_json::json!({
            "v": 1,
            "command": "ALTER PUBLICATION",
            "publications": [
                {"name": "other_pub", "tables": [], "insert": true, "update": true, "delete": true, "truncate": true},
                {"name": "p", "tables": tables, "insert": true, "update": update, "delete": true, "truncate": true},
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_setup_script_installs_the_same_guard() {
        let setup = include_str!("../../../deploy/postgres-setup.sql");
        assert!(
            setup.contains(GUARD_SQL),
            "deploy/postgres-setup.sql lost the DDL guard"
        );
    }

    fn guard(purge: bool) -> WindowGuard {
        WindowGuard::new("p".into(), "s".into(), purge)
    }

    #[test]
    fn a_complete_state_opens_nothing() {
        let mut g = guard(true);
        let v = g.message(&rules(), 100, &state(&["items", "other"], true));
        assert_eq!(v.unwrap(), Verdict::Nothing);
        assert!(!g.pending());
        assert_eq!(g.ack_limit(500), 500);
    }

    #[test]
    fn a_window_holds_acknowledgements_until_its_purge_is_confirmed() {
        let mut g = guard(true);
        let r = rules();
        assert_eq!(
            g.message(&r, 100, &state(&["other"], true)).unwrap(),
            Verdict::Nothing
        );
        g.commit(100, 110);
        assert_eq!(g.ack_limit(110), 100, "not past the opening transaction");
        assert_eq!(g.ack_limit(300), 100);
        let Verdict::Purge(inv) = g
            .message(&r, 400, &state(&["items", "other"], true))
            .unwrap()
        else {
            panic!("a closed window purges");
        };
        assert!(inv.patterns.contains(&"item:*".to_string()), "{inv:?}");
        assert!(
            !inv.patterns.iter().any(|p| p.starts_with("other")),
            "{inv:?}"
        );
        assert_eq!(
            g.ack_limit(350),
            100,
            "the closing transaction is not confirmed"
        );
        g.commit(400, 420);
        assert_eq!(g.ack_limit(419), 100);
        assert_eq!(g.ack_limit(420), 420);
        assert!(!g.pending());
        assert_eq!(g.ack_limit(900), 900);
    }

    #[test]
    fn a_withheld_operation_or_missing_publication_opens_a_window() {
        let r = rules();
        let mut g = guard(true);
        g.message(&r, 100, &state(&["items", "other"], false))
            .unwrap();
        assert!(g.pending());
        let mut g = guard(true);
        let gone = br#"{"v":1,"command":"DROP PUBLICATION","publications":[]}"#;
        g.message(&r, 100, gone).unwrap();
        assert!(g.pending());
        assert_eq!(g.ack_limit(200), 100);
    }

    #[test]
    fn refusing_names_the_window_and_the_tables() {
        let r = rules();
        let mut g = guard(false);
        g.message(&r, 0x100, &state(&[], true)).unwrap();
        let e = g
            .message(&r, 0x400, &state(&["items", "other"], true))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("public.items, public.other"), "{text}");
        assert!(text.contains("0/100") && text.contains("0/400"), "{text}");
        assert!(e.is_definite());
        assert_eq!(g.ack_limit(0x500), 0x100, "still held after refusing");
    }

    #[test]
    fn a_replayed_window_purges_again_and_garbage_changes_nothing() {
        let r = rules();
        let mut g = guard(true);
        g.message(&r, 100, b"not json").unwrap();
        g.message(&r, 100, br#"{"v":9,"publications":[]}"#).unwrap();
        assert!(!g.pending());
        g.message(&r, 100, &state(&["other"], true)).unwrap();
        assert!(matches!(
            g.message(&r, 400, &state(&["items", "other"], true)),
            Ok(Verdict::Purge(_))
        ));
        // A reconnection sends both transactions again.
        g.message(&r, 100, &state(&["other"], true)).unwrap();
        assert!(matches!(
            g.message(&r, 400, &state(&["items", "other"], true)),
            Ok(Verdict::Purge(_))
        ));
        g.commit(400, 420);
        assert_eq!(g.ack_limit(420), 420);
    }

    #[test]
    fn a_new_window_after_an_unconfirmed_close_keeps_the_older_start() {
        let r = rules();
        let mut g = guard(true);
        g.message(&r, 100, &state(&["other"], true)).unwrap();
        g.message(&r, 400, &state(&["items", "other"], true))
            .unwrap();
        g.commit(400, 420);
        g.message(&r, 500, &state(&["items"], true)).unwrap();
        assert_eq!(g.ack_limit(450), 100);
        assert!(matches!(
            g.message(&r, 600, &state(&["items", "other"], true)),
            Ok(Verdict::Purge(_))
        ));
        g.commit(600, 620);
        assert_eq!(g.ack_limit(620), 620);
    }
}

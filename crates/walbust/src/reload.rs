//! Hot reload of the rules file: when it changes, or on SIGHUP, load it
//! again and hand a valid result to the reader.
//!
//! ```text
//!  rules.yaml ──poll every second (content hash)──┐
//!  SIGHUP ────────────────────────────────────────┤
//!                                                 v
//!                    RuleSet::from_yaml ──(publication check)──> watch::Sender<Arc<RuleSet>>
//!                          │ error                                     │
//!                          v                                           v
//!            one log line + walbust_rules_reload_errors_total    walbust_cdc::Reader: next transaction
//! ```
//!
//! Polling the content (a few KiB, once a second) needs no dependency and
//! sees every kind of edit, in place or by rename, on any filesystem. An
//! editor that writes in two steps may show a half-written file for a
//! moment: that is an invalid file, logged and counted once, and the next
//! poll loads the finished one.
//!
//! A new rule set is refused, and the old one keeps running, when it does not
//! load, when the publication lacks a table it names (it would silently
//! invalidate nothing for that table), or when a rule names a column its
//! table does not send (checked against the catalog, so the error points at
//! the rule). The reader checks binding again against the tables it streams
//! (`walbust_rule_reloads_total{result="refused"}`) and reports the rules it
//! actually put in effect: those are the fallback and what the file is
//! compared with, so a set the reader refused (or keeps waiting until a
//! table is described with a new column) is offered again on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use walbust_rules::RuleSet;

use crate::metrics as m;

/// How often the rules file is read and compared.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long the database may take to answer the check of a new rule set.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a new rule set against the database before it is used.
#[derive(Clone)]
pub struct PublicationCheck {
    /// `source.url`.
    pub url: String,
    pub publication: String,
}

/// Watches one rules file.
pub struct Reloader {
    path: PathBuf,
    check: Option<PublicationCheck>,
    /// Hash of the content whose rules are in effect.
    applied: Option<u64>,
    /// What the reader evaluates with ([`walbust_cdc::Reader::with_in_effect`]).
    /// Without it, a set sent counts as in effect.
    in_effect: Option<watch::Receiver<Arc<RuleSet>>>,
    /// The set sent last and its content's hash, while the reader has not
    /// put it in effect (it may refuse it, or wait for a table's new
    /// description).
    offered: Option<(Arc<RuleSet>, u64)>,
    /// Hash of the content tried last (valid or not), so that a broken file
    /// is reported once, not every second.
    seen: Option<u64>,
    /// The last error reported, to report a lasting one once.
    last_error: Option<String>,
    /// What the rest of the configuration refuses in a rule set (see
    /// [`Self::with_validate`]).
    validate: Option<Validate>,
}

/// Why a rule set cannot run under the configuration, if it cannot.
pub type Validate = Box<dyn Fn(&RuleSet) -> Option<String> + Send + Sync>;

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Unchanged,
    Applied,
    Refused,
}

impl Reloader {
    /// Starts from the file as it is now: call it right after loading the
    /// rules in effect, so that only later edits count as changes.
    pub fn new(path: PathBuf, check: Option<PublicationCheck>) -> Reloader {
        let current = read(&path).ok().map(|text| fingerprint(&text));
        Reloader {
            path,
            check,
            applied: current,
            in_effect: None,
            offered: None,
            seen: current,
            last_error: None,
            validate: None,
        }
    }

    /// Refuses a new rule set that `validate` finds a reason against (rules
    /// with `at:` without the Redis sink that keeps the schedule), as `run`
    /// refuses it at start.
    pub fn with_validate(mut self, validate: Validate) -> Reloader {
        self.validate = Some(validate);
        self
    }

    /// Takes the reader's rules in effect as the ones to fall back on and
    /// to compare the file with, rather than the last set sent.
    pub fn with_in_effect(mut self, in_effect: watch::Receiver<Arc<RuleSet>>) -> Reloader {
        self.in_effect = Some(in_effect);
        self
    }

    /// Notes whether the set offered last is in effect now.
    fn follow_reader(&mut self) {
        let (Some(rx), Some((set, hash))) = (&self.in_effect, &self.offered) else {
            return;
        };
        if Arc::ptr_eq(&rx.borrow(), set) {
            self.applied = Some(*hash);
            self.offered = None;
        }
    }

    /// Runs until `shutdown` turns true or nobody receives rules any more.
    /// Listens for SIGHUP from the moment it is called.
    pub fn spawn(
        self,
        rules: watch::Sender<Arc<RuleSet>>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        // Installed before the task starts: from here on SIGHUP reloads
        // instead of ending the process (its default action).
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the rules file is still watched");
                None
            }
        };
        tokio::spawn(self.run(rules, shutdown, hangup))
    }

    async fn run(
        mut self,
        rules: watch::Sender<Arc<RuleSet>>,
        mut shutdown: watch::Receiver<bool>,
        mut hangup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = wait_true(&mut shutdown) => return,
                () = rules.closed() => return,
                _ = tick.tick() => false,
                Some(()) = recv(&mut hangup) => true,
            };
            if forced {
                tracing::info!(file = %self.path.display(), "SIGHUP: loading the rules file");
            }
            self.attempt(forced, &rules).await;
        }
    }

    /// Reads the file and, if it changed (or `forced`), loads it and sends
    /// it on `rules`.
    async fn attempt(&mut self, forced: bool, rules: &watch::Sender<Arc<RuleSet>>) -> Attempt {
        let text = match read(&self.path) {
            Ok(text) => text,
            Err(e) => {
                self.refuse(forced, e);
                return Attempt::Refused;
            }
        };
        let hash = fingerprint(&text);
        self.follow_reader();
        if self.applied == Some(hash) {
            if let (Some(rx), Some(_)) = (&self.in_effect, self.offered.take()) {
                // The file went back to the rules in effect while another
                // set waits at the reader: offering these again withdraws it.
                rules.send_replace(rx.borrow().clone());
            }
            // The rules in effect (perhaps again, after a broken save): a
            // later error is news again.
            self.seen = Some(hash);
            self.last_error = None;
            if forced {
                tracing::info!(file = %self.path.display(), "rules file unchanged; the rules in effect stay");
            }
            return Attempt::Unchanged;
        }
        // Unless asked (SIGHUP), a set sent and not yet in effect is left to
        // the reader, which tries it again when a table is described anew.
        if !forced && self.seen == Some(hash) {
            return Attempt::Unchanged;
        }
        self.seen = Some(hash);
        let set = match RuleSet::from_yaml(&text, &self.path.display().to_string()) {
            Ok(set) => set,
            Err(e) => {
                self.refuse(forced, e.to_string());
                return Attempt::Refused;
            }
        };
        if let Some(why) = self.validate.as_ref().and_then(|v| v(&set)) {
            self.refuse(forced, why);
            return Attempt::Refused;
        }
        if let Some(check) = &self.check {
            let verdict = tokio::time::timeout(DB_CHECK_TIMEOUT, database_refusal(check, &set))
                .await
                .map_err(|_| format!("no answer in {}s", DB_CHECK_TIMEOUT.as_secs()))
                .and_then(|r| r.map_err(|e| walbust_flow::Chain(&e).to_string()));
            match verdict {
                Ok(None) => {}
                Ok(Some(why)) => {
                    self.refuse(forced, why);
                    return Attempt::Refused;
                }
                Err(e) => {
                    // Not the file's fault: try again at the next poll.
                    self.seen = None;
                    self.refuse(
                        forced,
                        format!("cannot check the new rules against the database: {e}"),
                    );
                    return Attempt::Refused;
                }
            }
        }
        let count = set.rules().len();
        let set = Arc::new(set);
        rules.send_replace(set.clone());
        if self.in_effect.is_some() {
            self.offered = Some((set, hash));
        } else {
            self.applied = Some(hash);
        }
        self.last_error = None;
        tracing::info!(
            file = %self.path.display(),
            rules = count,
            "rules reloaded; the reader takes them at its next transaction"
        );
        Attempt::Applied
    }

    fn refuse(&mut self, forced: bool, message: String) {
        if !forced && self.last_error.as_deref() == Some(message.as_str()) {
            return;
        }
        metrics::counter!(m::RULES_RELOAD_ERRORS).increment(1);
        tracing::error!(error = %message, "rules reload refused; the previous rules keep running");
        self.last_error = Some(message);
    }
}

/// Why the database cannot take `set`, if it cannot: tables the publication
/// does not include, or a rule naming a column a table does not send (what
/// the reader would refuse at its next transaction, said here with the
/// rule's position). `Err`: the database could not be asked.
async fn database_refusal(
    check: &PublicationCheck,
    set: &RuleSet,
) -> Result<Option<String>, walbust_cdc::SourceError> {
    let tables = set.tables();
    if tables.is_empty() {
        return Ok(None);
    }
    let client = walbust_cdc::source::connect(&check.url).await?;
    let Some(publication) = walbust_cdc::catalog::publication(&client, &check.publication).await?
    else {
        return Ok(Some(format!(
            "publication \"{}\" does not exist",
            check.publication
        )));
    };
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !publication.tables.contains(t))
        .map(|t| t.to_string())
        .collect();
    if !missing.is_empty() {
        return Ok(Some(format!(
            "publication \"{}\" does not include tables the new rules name: {} \
             (ALTER PUBLICATION ... ADD TABLE, then save the file again or send SIGHUP)",
            check.publication,
            missing.join(", ")
        )));
    }
    if let Some(problem) = walbust_cdc::source::withheld(&publication, set).first() {
        return Ok(Some(walbust_flow::Chain(problem).to_string()));
    }
    match walbust_cdc::source::check_columns(&client, &publication, set).await {
        Err(walbust_cdc::SourceError::RulesDoNotFit { source, .. }) => Ok(Some(source.to_string())),
        Err(e) => Err(e),
        Ok(()) => Ok(None),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the rules file: {e}", path.display()))
}

fn fingerprint(text: &str) -> u64 {
    walbust_rules::fnv1a64(text.as_bytes())
}

async fn recv(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the watch holds `true`; pends forever if the sender is gone.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Aborts the watcher when dropped, whichever way `run` returns.
pub struct WatcherGuard(pub JoinHandle<()>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "version: 1\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n";
    const V2: &str = "version: 1\nrules:\n  - table: t\n    keys: [\"t2:{id}\"]\n";
    const BROKEN: &str = "version: 1\nrules:\n  - table: t\n    keys: [\"t:{id\"]\n";

    fn setup(
        text: &str,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        Reloader,
        watch::Sender<Arc<RuleSet>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, text).unwrap();
        let set = RuleSet::load(&path).unwrap();
        let reloader = Reloader::new(path.clone(), None);
        let (tx, _) = watch::channel(Arc::new(set));
        (dir, path, reloader, tx)
    }

    fn first_key(set: &RuleSet) -> Vec<String> {
        let bound = set.bind("public", "t", &["id"]).unwrap().unwrap();
        let mut out = walbust_rules::Invalidations::default();
        let new = vec![walbust_rules::Datum::Text("1")];
        bound.evaluate(
            walbust_rules::Op::Insert,
            None,
            Some(&new),
            &mut walbust_rules::TxBudget::default(),
            &mut out,
        );
        out.keys
    }

    #[tokio::test]
    async fn an_edit_is_applied_once() {
        let (_dir, path, mut r, tx) = setup(V1);
        let rx = tx.subscribe();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        std::fs::write(&path, V2).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Applied);
        assert_eq!(first_key(&rx.borrow()), ["t2:1"]);
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
    }

    #[tokio::test]
    async fn a_broken_edit_keeps_the_old_rules() {
        let (_dir, path, mut r, tx) = setup(V1);
        let rx = tx.subscribe();
        std::fs::write(&path, BROKEN).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Refused);
        assert_eq!(first_key(&rx.borrow()), ["t:1"]);
        assert!(r
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("rules.yaml:4:")));
        // Reported once: the same broken content is not tried again...
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        // ...unless asked (SIGHUP).
        assert_eq!(r.attempt(true, &tx).await, Attempt::Refused);
        // Fixing the file applies it.
        std::fs::write(&path, V2).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Applied);
        assert_eq!(first_key(&rx.borrow()), ["t2:1"]);
    }

    #[tokio::test]
    async fn what_the_configuration_refuses_is_not_applied() {
        let (_dir, path, r, tx) = setup(V1);
        let mut r = r.with_validate(Box::new(|set: &RuleSet| {
            set.rules()
                .iter()
                .any(|rule| !rule.at.is_empty())
                .then(|| "at: needs sinks.redis".to_owned())
        }));
        let rx = tx.subscribe();
        std::fs::write(&path, V2.replace("keys:", "at: [\"{id}\"]\n    keys:")).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Refused);
        assert_eq!(first_key(&rx.borrow()), ["t:1"]);
        assert_eq!(r.last_error.as_deref(), Some("at: needs sinks.redis"));
    }

    #[tokio::test]
    async fn the_rules_in_effect_at_the_reader_are_the_fallback() {
        let (_dir, path, r, tx) = setup(V1);
        let (reader, in_effect) = watch::channel(tx.borrow().clone());
        let mut r = r.with_in_effect(in_effect);
        let rx = tx.subscribe();
        std::fs::write(&path, V2).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Applied);
        // The reader refused V2 (V1 stays in effect): polling leaves it to
        // the reader, SIGHUP offers it again instead of calling it unchanged.
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        assert_eq!(r.attempt(true, &tx).await, Attempt::Applied);
        // The reader took it: V2 is the fallback from now on.
        reader.send_replace(rx.borrow().clone());
        assert_eq!(r.attempt(true, &tx).await, Attempt::Unchanged);
        std::fs::write(&path, BROKEN).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Refused);
        std::fs::write(&path, V2).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        assert_eq!(first_key(&rx.borrow()), ["t2:1"]);
        // V1 offered and not taken, then the file goes back to V2: V2 is
        // offered again, which withdraws V1 at the reader.
        std::fs::write(&path, V1).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Applied);
        assert_eq!(first_key(&rx.borrow()), ["t:1"]);
        std::fs::write(&path, V2).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        assert!(Arc::ptr_eq(&rx.borrow(), &reader.borrow()));
    }

    #[tokio::test]
    async fn a_missing_file_is_refused_and_recovered() {
        let (_dir, path, mut r, tx) = setup(V1);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.attempt(false, &tx).await, Attempt::Refused);
        std::fs::write(&path, V1).unwrap();
        // Same content as in effect: nothing to do.
        assert_eq!(r.attempt(false, &tx).await, Attempt::Unchanged);
        assert_eq!(r.attempt(true, &tx).await, Attempt::Unchanged);
    }
}

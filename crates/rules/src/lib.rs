//! walbust's rules: which cache keys, tags and patterns a committed row
//! change invalidates.
//!
//! # Map
//!
//! | module | role |
//! |---|---|
//! | `syntax` | rules.yaml as written (serde, with positions) |
//! | `ruleset` | validation and compilation: [`RuleSet`], binding to a table's columns: [`BoundTable`]; one rule at a time for tooling ([`RuleSet::bind_only`], [`RuleSet::template_columns`]) |
//! | `template` | `"product:{id}"` → segments; rendering and pattern escaping; [`Side`] |
//! | `condition` | `when:` trees, three-valued evaluation |
//! | `eval` | the hot path: [`BoundTable::evaluate`], [`TxBudget`], [`Outcome`], [`Invalidations`] |
//! | `row` | [`Op`], [`Datum`], [`RowValues`]: how a change is seen |
//! | `explicit` | `pg_logical_emit_message` payloads: [`parse_explicit`] |
//! | `hash` | the `{col:hash}` / long-key hash: [`hash_value`] |
//! | `schedule` | `at:`: [`Scheduled`] entries, timestamps read by [`parse_timestamp`] |
//!
//! The work is split in three stages so the per-change path does as little
//! as possible: [`RuleSet::from_yaml`] checks everything that needs no
//! database and compiles templates; [`RuleSet::bind`] resolves column names
//! to indexes when the replication stream describes a table; and
//! [`BoundTable::evaluate`] renders strings. The crate does no I/O except
//! reading the file in [`RuleSet::load`].
//!
//! # The rules language (rules.yaml)
//!
//! ```yaml
//! version: 1                 # required; this walbust reads version 1
//! prefix: "app:"             # optional: prepended to every key and pattern (not to tags)
//! max_key_bytes: 512         # optional, default 1024
//! on_long_key: hash          # optional: hash (default) or refuse
//! on_oversize: glob          # optional: glob (default), fallback or table
//! max_keys_per_tx: 10000     # optional, default 10000: per-rule budget, see below
//! rules:
//!   - table: public.products            # `products` means `public.products`; globs: `public.orders_*`
//!     on: [insert, update, delete]      # any of insert, update, delete, truncate; default: all four
//!     prefix: "shop:"                   # optional, appended after the global prefix
//!     when: { changed: [status, total] } # optional filter, see below
//!     keys: ["product:{id}", "product:{id}:detail"]
//!     tags: ["category:{category_id}", "products"]
//!     patterns: ["product-list:*"]
//!     max_keys_per_tx: 50000            # optional, overrides the global budget
//!     on_oversize: fallback             # optional, overrides the global one
//!     at: ["{starts_at}", "{ends_at}"]  # optional: invalidate the row's output again then
//!     refresh: true                     # optional: its keys also go to the refresh stream
//! ```
//!
//! Every mapping rejects unknown fields. A rule needs at least one of
//! `keys`, `tags`, `patterns`. Several rules may name the same table; all
//! that match fire.
//!
//! ## Tables
//!
//! `schema.table`, or `table` for `public.table`. `*` (any run of
//! characters) and `?` (one character) make a glob in either part. Names
//! compare exactly, as Postgres reports them: write them without SQL quotes
//! (an unquoted identifier is lowercase in Postgres); they cannot contain
//! dots, quotes or whitespace. [`RuleSet::tables`] lists the exact names and
//! [`RuleSet::table_patterns`] the globs, for checking the publication.
//!
//! ## Templates
//!
//! Keys, tags and patterns are text with placeholders:
//!
//! | placeholder | insert | update | delete |
//! |---|---|---|---|
//! | `{col}` | new value | old and new value (see below) | old value |
//! | `{new.col}` | new value | new value | — (skipped) |
//! | `{old.col}` | — (skipped) | old value | old value |
//! | `{col:hash}`, `{old.col:hash}`, `{new.col:hash}` | the value's hash instead of the value | | |
//!
//! `{{` and `}}` write literal braces. Values are Postgres's text output
//! (`t`/`f` for booleans, `2024-01-31 10:00:00+00` for timestamps).
//!
//! On an update, a template containing `{col}` renders twice: once with the
//! old row and once with the new row, and the same text only once. A product
//! moved from category 3 to 4 gives `category:3` and `category:4`; a key
//! `user:{user_id}:orders:{status}` gives the key of the old row and the key
//! of the new row. (Mixed old/new combinations name no row that ever
//! existed, so at most two strings come from a template per change.)
//! `{old.col}` and `{new.col}` stay on their side in both renderings. When
//! Postgres sent no old tuple (the replica identity saw no change in the
//! key), or the old tuple lacks the column, `{col}` uses the new value:
//! [`BoundTable::needs_old_values`] lists the columns whose old values a
//! rule reads, so that the replica identity can be checked to send them.
//!
//! `{col:hash}` renders 16 lowercase hex digits of FNV-1a 64 over the
//! value's UTF-8 bytes ([`hash_value`]; `""` → `cbf29ce484222325`), for
//! long values such as URLs. Applications build their keys the same way.
//!
//! A template that reads a side its rule can never have (`{new.col}` in a
//! rule only `on: [delete]`) is a load error. A placeholder-free template
//! is a constant.
//!
//! ## Missing and NULL values
//!
//! A value that did not arrive never produces a key: an unchanged TOASTed
//! value whose old value is unknown, or an old value the replica identity
//! did not send for `{old.col}`. The template is skipped (the rule's other
//! templates and its constants still go out) and [`Outcome::missing`]
//! counts it, so the caller can alert: such a cache may go stale. A NULL
//! value skips the template too (no `product:` key), counted in
//! [`Outcome::null`]. A reference to a side the operation does not have
//! (`{new.col}` on a delete) is skipped silently: writing
//! `["category:{old.category_id}", "category:{new.category_id}"]` is
//! meant to produce one key per side.
//!
//! ## Prefixes, patterns and long keys
//!
//! Keys are `<prefix><rule prefix><template>`. Patterns get the same
//! prefixes, glob-escaped. Tags get no prefix.
//!
//! In `patterns`, values from the row are escaped with a backslash before
//! each of `* ? [ ] \` so that row data can never widen a pattern: a product
//! named `*` does not turn `list:{name}:*` into `list:*:*`. What the rule
//! writes literally keeps its glob meaning.
//!
//! A key longer than `max_key_bytes` (prefix included) is never cut. With
//! `on_long_key: hash` it becomes `<prefixes>#<hash of the rest>` (the hash
//! as for `{col:hash}`, over the key without its prefixes); with `refuse`
//! it is dropped and counted in [`Outcome::refused`]. Prefixes must leave
//! room within `max_key_bytes`; a constant key that is too long with
//! `refuse` is a load error. Tags rendered from templates are names the
//! application computes too, and follow the same policy (a tag has no
//! prefix: `#<hash of the tag>`).
//!
//! A pattern cannot be hashed (it would match nothing), so a pattern
//! rendered longer than `max_key_bytes` is replaced by what `on_oversize`
//! names (top level, or per rule), and counted in [`Outcome::oversize`]:
//!
//! | `on_oversize` | stands in for the long pattern |
//! |---|---|
//! | `glob` (default) | the template's glob, each placeholder a `*` (`list:{name}:*` → `list:*:*`) |
//! | `fallback` | the rule's placeholder-free tags and patterns (a load error if it has none) |
//! | `table` | everything the rules naming the same table cover: constant keys, tags and patterns, the globs of key and pattern templates |
//!
//! A `glob` longer than `max_key_bytes` itself is a load error. None of these
//! strings is ever built at full length: a 500 MB text value costs a length
//! count, so no row can make walbust hold more than the row itself.
//!
//! ## Per-transaction budget and escalation
//!
//! A rule may render at most `max_keys_per_tx` strings from templates
//! (keys, tags and patterns with placeholders) per transaction. Past that it
//! escalates: for the rest of the transaction it renders nothing, and its
//! placeholder-free tags and patterns stand for the whole table (a 1M-row
//! UPDATE purges tag `products` instead of queueing a million keys).
//! [`Outcome::escalated`] counts escalations. A rule without a
//! placeholder-free tag or pattern has nothing to escalate to and is never
//! limited ([`RuleInfo::has_fallback`]). The state lives in the caller's
//! [`TxBudget`], reset per transaction; with it, constant keys, tags and
//! patterns go out once per transaction, on the rule's first matching
//! change, not once per row.
//!
//! ## TRUNCATE
//!
//! A rule with `truncate` in `on` yields its placeholder-free keys, tags and
//! patterns; templates with placeholders are unknowable without rows.
//! `when` is not evaluated (every row is gone). Listing `truncate`
//! explicitly in a rule that has templates but no placeholder-free tag or
//! pattern is a load error; under the default `on` (all four operations)
//! such a rule counts a TRUNCATE as [`Outcome::missing`].
//!
//! ## Conditions (`when`)
//!
//! ```yaml
//! when: { changed: [status, total] }         # update: one of these columns differs
//! when: { new: { status: { eq: paid } } }    # new value equals "paid"
//! when: { old: { status: { ne: paid } } }    # old value is not "paid" (NULL is not "paid")
//! when: { new: { status: { in: [paid, shipped] } } }
//! when: { new: { status: { not_in: [draft] } } }
//! when: { new: { deleted_at: null } }        # SQL NULL
//! when: { new: { deleted_at: not_null } }
//! when:                                      # several keys in one mapping: all must hold
//!   changed: [status]
//!   new: { status: { eq: paid }, total: not_null }
//! when: { any: [ { changed: [price] }, { new: { featured: { eq: t } } } ] }
//! when: { all: [ ..., ... ] }
//! when: { not: { new: { status: { eq: draft } } } }
//! ```
//!
//! Grammar (one YAML mapping; several keys are combined with *all*):
//!
//! ```text
//! condition := { changed: [column, ...] }
//!            | { old: { column: test, ... } }      several columns: all
//!            | { new: { column: test, ... } }
//!            | { all: [condition, ...] }
//!            | { any: [condition, ...] }
//!            | { not: condition }
//! test      := null | not_null | { eq: text } | { ne: text }
//!            | { in: [text, ...] } | { not_in: [text, ...] }
//! ```
//!
//! Values compare as text with what Postgres prints. NULL equals nothing:
//! `eq`/`in` are false on NULL, `ne`/`not_in` true. `changed` is true on
//! insert and delete; on update an unchanged TOASTed value counts as not
//! changed, NULL to a value as changed.
//!
//! A test that cannot be decided is *unknown*: it reads `new` on a delete or
//! `old` on an insert, or a value that did not arrive (then it also counts
//! as [`Outcome::missing`]). Unknown propagates like SQL's NULL (`not
//! unknown` is unknown; `all` is false if any part is false; `any` is true
//! if any part is true) and a rule whose condition ends unknown fires: an
//! extra invalidation costs a cache miss, a missed one serves stale data.
//!
//! ## Scheduled invalidation (`at`)
//!
//! `at:` lists templates that are each exactly one placeholder (`{col}`,
//! `{old.col}`, `{new.col}`; no literal text, no `:hash`) naming a
//! timestamp: besides its output at commit, the rule's whole output for the
//! row (its placeholder-free keys, tags and patterns included, even when the
//! transaction sent them already) goes into [`Invalidations::schedule`] once
//! per distinct time, as a [`Scheduled`] entry. `{col}` reads sides as in
//! keys: an update that moved the time schedules the old and the new one.
//!
//! Values are read by [`parse_timestamp`]: Postgres's ISO output of
//! `timestamptz` (`2026-12-04 19:40:00.5+00`, any offset), of `timestamp`
//! (no offset: read as UTC), or of `date` (its midnight, UTC). NULL,
//! `infinity` and `-infinity` schedule nothing; anything else (another
//! `DateStyle`, a BC date) schedules nothing and counts in
//! [`Outcome::unreadable_at`]. A value that did not arrive counts in
//! [`Outcome::missing`]. Each entry counts against `max_keys_per_tx` like a
//! rendered key; an escalated rule schedules nothing more in the
//! transaction. When and how entries are stored and applied is the
//! publisher's business (walbust: a Redis sorted set, see the README).
//!
//! ## Refresh (`refresh: true`)
//!
//! The keys the rule renders for a change (its constant keys included) are
//! also listed in [`Invalidations::refresh`], for a stream that cache
//! warmers read. A rule with `refresh: true` needs `keys`.
//!
//! ## Explicit invalidations
//!
//! Applications can invalidate from inside a transaction, so the
//! invalidation happens exactly when the transaction commits:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, 'walbust',
//!   '{"keys":["cart:42"],"tags":["user:7"],"patterns":["feed:7:*"]}');
//! ```
//!
//! All three fields are optional arrays of non-empty strings; any other
//! field, or a field twice, is an error ([`parse_explicit`]). Keys and
//! patterns get the global `prefix` (not rule prefixes) and keys the long-key
//! policy ([`RuleSet::explicit`]). Patterns are not escaped: the application
//! wrote them.
//!
//! ## Errors
//!
//! Loading reports the first problem as one line,
//! `rules.yaml:14:9: rule 3 (public.orders): unknown placeholder {nwe.total}: ...`;
//! YAML syntax errors and unknown fields carry the parser's line and
//! column. [`RuleSet::bind`] reports a placeholder or condition naming a
//! column the table does not have, with the rule's position.
//!
//! # Example
//!
//! ```
//! use walbust_rules::{Datum, Invalidations, Op, RuleSet, TxBudget};
//!
//! let set = RuleSet::from_yaml(
//!     r#"
//! version: 1
//! rules:
//!   - table: products
//!     keys: ["product:{id}"]
//!     tags: ["category:{category_id}", "products"]
//! "#,
//!     "rules.yaml",
//! )?;
//! let table = set.bind("public", "products", &["id", "category_id"])?.expect("a rule names it");
//! let old = vec![Datum::Text("42"), Datum::Text("3")];
//! let new = vec![Datum::Text("42"), Datum::Text("4")];
//! let (mut budget, mut out) = (TxBudget::default(), Invalidations::default());
//! table.evaluate(Op::Update, Some(&old), Some(&new), &mut budget, &mut out);
//! assert_eq!(out.keys, ["product:42"]);
//! assert_eq!(out.tags, ["products", "category:3", "category:4"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod condition;
mod error;
mod eval;
mod explicit;
mod hash;
mod row;
mod ruleset;
mod schedule;
mod syntax;
mod template;

pub use error::{BindError, ExplicitError, Position, RuleRef, RulesError};
pub use eval::{BoundTable, Invalidations, Outcome, TxBudget};
pub use explicit::{
    matches_every_key, parse_explicit, ExplicitPolicy, Refusal as ExplicitRefusal,
    DEFAULT_EXPLICIT_MAX_BYTES, DEFAULT_EXPLICIT_MAX_ENTRIES,
};
pub use hash::{fnv1a64, hash_value};
pub use row::{Datum, Op, RowValues};
pub use ruleset::{
    yaml_error_line, Coverage, Degraded, LongKeyPolicy, OversizePolicy, RuleInfo, RuleSet,
    TableName, DEFAULT_MAX_KEYS_PER_TX, DEFAULT_MAX_KEY_BYTES, MAX_MAX_KEY_BYTES,
    SUPPORTED_VERSION,
};
pub use schedule::{bytes_of, parse_timestamp, Scheduled};
pub use template::Side;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn compiled_types_are_send_and_sync() {
        assert_send_sync::<super::RuleSet>();
        assert_send_sync::<super::BoundTable>();
        assert_send_sync::<super::TxBudget>();
        assert_send_sync::<super::Invalidations>();
    }
}

//! The contract between a subscriber and the cache it keeps fresh.

use crate::glob::Glob;

/// A local cache that walbust's records invalidate.
///
/// Delivery is at-least-once and records are applied as they come: every method must be
/// idempotent (removing what is already gone is not an error) and order-free (invalidations
/// of different records commute). Nothing here inserts: filling the cache is the service's job.
///
/// Methods take `&self` and are called from the subscriber's task while the service reads and
/// fills the cache from others, so implementations use interior mutability.
pub trait LocalCache: Send + Sync {
    /// Drops the entries of these keys.
    fn invalidate_keys(&self, keys: &[String]);

    /// Drops every entry filed under one of these tags (the tags the service declared when it
    /// inserted the entry).
    fn invalidate_tags(&self, tags: &[String]);

    /// Drops every entry whose key matches one of these Redis glob patterns ([`Glob`]). A
    /// match-all pattern (`*`) never reaches this method: the subscriber calls [`clear`]
    /// instead.
    ///
    /// [`clear`]: LocalCache::clear
    fn invalidate_patterns(&self, patterns: &[Glob]);

    /// Drops everything: a flush-all record, or a transport gap after which the subscriber
    /// cannot know what it missed.
    fn clear(&self);
}

impl<C: LocalCache + ?Sized> LocalCache for std::sync::Arc<C> {
    fn invalidate_keys(&self, keys: &[String]) {
        (**self).invalidate_keys(keys)
    }
    fn invalidate_tags(&self, tags: &[String]) {
        (**self).invalidate_tags(tags)
    }
    fn invalidate_patterns(&self, patterns: &[Glob]) {
        (**self).invalidate_patterns(patterns)
    }
    fn clear(&self) {
        (**self).clear()
    }
}

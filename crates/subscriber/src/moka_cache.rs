//! [`MokaCache`]: a [`moka::sync::Cache`] that walbust's records keep fresh.
//!
//! Keys and patterns act on moka's keys directly. A pattern walks every entry (one walk per
//! record, whatever the number of patterns in it), as `SCAN` walks Redis: prefer tags. Tags need a local index, since moka knows
//! nothing of them: the service declares an entry's tags when it inserts it
//! ([`MokaCache::insert_tagged`]), and the index maps each tag to its entries.
//!
//! The index stays bounded by the cache: moka tells the adapter of every entry that leaves
//! (evicted for size or age, replaced, invalidated) through its eviction listener, and the entry
//! leaves the index too. Each insert gets an id, and the index forgets an entry only under the
//! id it was filed with, so the departure of a replaced value never unfiles its successor.
//!
//! The listener runs inside moka's calls, sometimes while the adapter holds the index lock, so it
//! never waits for that lock: it queues the departure and applies the queue when the lock is
//! free (or leaves it to the next writer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use moka::notification::RemovalCause;
use moka::sync::{Cache, CacheBuilder};

use crate::cache::LocalCache;
use crate::glob::Glob;

/// What the adapter stores in moka for each key: the service's value and its tags.
#[derive(Clone)]
pub struct Tagged<V> {
    value: V,
    tags: Arc<[String]>,
    id: u64,
}

/// The builder [`MokaCache::with_builder`] takes.
pub type MokaBuilder<V> = CacheBuilder<String, Tagged<V>, Cache<String, Tagged<V>>>;

/// A moka cache with a tag index, kept fresh by a subscriber through [`LocalCache`].
///
/// Cheap to clone (clones share the cache): give one clone to the subscriber and keep another
/// to read and fill.
#[derive(Clone)]
pub struct MokaCache<V> {
    cache: Cache<String, Tagged<V>>,
    index: Arc<TagIndex>,
    next_id: Arc<AtomicU64>,
}

/// Tag → key → id of the entry filed under it.
type Filing = HashMap<String, HashMap<String, u64>>;

/// An entry that left moka: its key, its tags and its id.
type Departure = (Arc<String>, Arc<[String]>, u64);

#[derive(Default)]
struct TagIndex {
    filing: Mutex<Filing>,
    departed: Mutex<Vec<Departure>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave the maps half-updated in a way that matters more than
    // losing invalidation would.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TagIndex {
    /// Called by moka for every entry that leaves.
    fn departed(&self, key: Arc<String>, tags: Arc<[String]>, id: u64) {
        if tags.is_empty() {
            return;
        }
        lock(&self.departed).push((key, tags, id));
        if let Ok(mut filing) = self.filing.try_lock() {
            self.unfile_departed(&mut filing);
        }
    }

    /// Applies the queued departures. Called with the filing lock held.
    fn unfile_departed(&self, filing: &mut Filing) {
        let departed = std::mem::take(&mut *lock(&self.departed));
        for (key, tags, id) in departed {
            for tag in tags.iter() {
                if let Some(members) = filing.get_mut(tag) {
                    if members.get(key.as_str()) == Some(&id) {
                        members.remove(key.as_str());
                        if members.is_empty() {
                            filing.remove(tag);
                        }
                    }
                }
            }
        }
    }

    fn filing(&self) -> MutexGuard<'_, Filing> {
        let mut filing = lock(&self.filing);
        self.unfile_departed(&mut filing);
        filing
    }
}

impl<V: Clone + Send + Sync + 'static> MokaCache<V> {
    /// A cache of at most `max_capacity` entries.
    pub fn new(max_capacity: u64) -> Self {
        Self::with_builder(Cache::builder().max_capacity(max_capacity))
    }

    /// A cache from a moka builder (capacity, time to live, weigher, ...). The adapter sets the
    /// builder's eviction listener: one set beforehand is replaced.
    pub fn with_builder(builder: MokaBuilder<V>) -> Self {
        let index = Arc::new(TagIndex::default());
        let listener_index = Arc::clone(&index);
        let cache = builder
            .eviction_listener(move |key, entry: Tagged<V>, _cause: RemovalCause| {
                listener_index.departed(key, entry.tags, entry.id)
            })
            .build();
        MokaCache {
            cache,
            index,
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The value cached under `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.cache.get(key).map(|entry| entry.value)
    }

    /// Caches `value` under `key`, without tags.
    pub fn insert(&self, key: impl Into<String>, value: V) {
        self.insert_tagged(key, value, std::iter::empty::<String>());
    }

    /// Caches `value` under `key`, filed under `tags`: an invalidation of any of them drops it.
    /// Replaces an earlier value and its tags.
    pub fn insert_tagged<T: Into<String>>(
        &self,
        key: impl Into<String>,
        value: V,
        tags: impl IntoIterator<Item = T>,
    ) {
        let key = key.into();
        let mut tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        tags.sort_unstable();
        tags.dedup();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Tagged {
            value,
            tags: tags.into(),
            id,
        };
        if entry.tags.is_empty() {
            self.cache.insert(key, entry);
            return;
        }
        // Filed and inserted under one lock, so a tag purge sees both or neither.
        let mut filing = self.index.filing();
        for tag in entry.tags.iter() {
            filing
                .entry(tag.clone())
                .or_default()
                .insert(key.clone(), id);
        }
        self.cache.insert(key, entry);
    }

    /// Drops the entry of `key`.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Entries in the cache (moka's estimate: it settles after [`Self::run_pending_tasks`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// (tag, entry) pairs in the tag index, after applying pending departures.
    pub fn tag_index_len(&self) -> usize {
        self.index.filing().values().map(HashMap::len).sum()
    }

    /// Runs moka's pending maintenance (evictions, and so their departures from the tag index).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The moka cache underneath, to read statistics or iterate. Insert through the adapter:
    /// an entry inserted here has no tags.
    pub fn inner(&self) -> &Cache<String, Tagged<V>> {
        &self.cache
    }
}

impl<V> Tagged<V> {
    /// The service's value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The tags it was filed under.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
}

impl<V: Clone + Send + Sync + 'static> LocalCache for MokaCache<V> {
    fn invalidate_keys(&self, keys: &[String]) {
        for key in keys {
            self.cache.invalidate(key);
        }
    }

    fn invalidate_tags(&self, tags: &[String]) {
        let mut filing = self.index.filing();
        for tag in tags {
            for (key, _) in filing.remove(tag).unwrap_or_default() {
                // Under the lock: an entry filed after this purge is a newer fill, not dropped
                // by it, and one filed before it is gone from moka when the purge ends.
                self.cache.invalidate(&key);
            }
        }
    }

    fn invalidate_patterns(&self, patterns: &[Glob]) {
        if patterns.is_empty() {
            return;
        }
        for (key, _) in self.cache.iter() {
            if patterns.iter().any(|glob| glob.matches(&key)) {
                self.cache.invalidate(key.as_str());
            }
        }
    }

    fn clear(&self) {
        let mut filing = self.index.filing();
        self.cache.invalidate_all();
        filing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn cached(cache: &MokaCache<u32>, keys: &[&str]) -> Vec<String> {
        keys.iter()
            .filter(|k| cache.get(k).is_some())
            .map(|k| k.to_string())
            .collect()
    }

    fn filled() -> MokaCache<u32> {
        let cache = MokaCache::new(1000);
        cache.insert("product:1", 1);
        cache.insert("product:2", 2);
        cache.insert_tagged("page:cat3:a", 3, ["category:3"]);
        cache.insert_tagged("page:cat3:b", 4, ["category:3", "products"]);
        cache.insert_tagged("page:cat4:a", 5, ["category:4"]);
        cache.insert("list:3:p1", 6);
        cache.insert("list:*:p1", 7);
        cache
    }

    const ALL: &[&str] = &[
        "product:1",
        "product:2",
        "page:cat3:a",
        "page:cat3:b",
        "page:cat4:a",
        "list:3:p1",
        "list:*:p1",
    ];

    #[test]
    fn keys_tags_and_patterns_drop_exactly_their_entries() {
        let cache = filled();
        cache.invalidate_keys(&strings(&["product:1", "absent"]));
        assert_eq!(cached(&cache, ALL).len(), ALL.len() - 1);
        assert!(cache.get("product:1").is_none());

        cache.invalidate_tags(&strings(&["category:3"]));
        assert_eq!(
            cached(&cache, ALL),
            ["product:2", "page:cat4:a", "list:3:p1", "list:*:p1"]
        );

        cache.invalidate_patterns(&[Glob::new("list:\\*:*")]);
        assert_eq!(
            cached(&cache, ALL),
            ["product:2", "page:cat4:a", "list:3:p1"]
        );

        cache.clear();
        assert!(cached(&cache, ALL).is_empty());
        assert_eq!(cache.tag_index_len(), 0);
    }

    #[test]
    fn a_tag_purge_leaves_the_entry_other_tags_do_not_hold() {
        let cache = filled();
        cache.invalidate_tags(&strings(&["products"]));
        assert!(cache.get("page:cat3:b").is_none());
        assert!(cache.get("page:cat3:a").is_some());
        // page:cat3:b left category:3 too.
        assert_eq!(cache.tag_index_len(), 2);
    }

    #[test]
    fn replacing_an_entry_refiles_it() {
        let cache = MokaCache::new(100);
        cache.insert_tagged("k", 1, ["a", "b"]);
        cache.insert_tagged("k", 2, ["b", "c"]);
        cache.run_pending_tasks();
        assert_eq!(cache.tag_index_len(), 2, "filed under b and c only");
        cache.invalidate_tags(&strings(&["a"]));
        assert_eq!(cache.get("k"), Some(2), "a no longer names k");
        cache.invalidate_tags(&strings(&["b"]));
        assert_eq!(cache.get("k"), None, "the replacement is still under b");
        cache.insert("k", 3);
        cache.insert_tagged("k", 4, ["c"]);
        cache.insert("k", 5);
        cache.invalidate_tags(&strings(&["c"]));
        assert_eq!(
            cache.get("k"),
            Some(5),
            "an untagged replacement leaves the tag"
        );
    }

    #[test]
    fn the_tag_index_stays_bounded_by_the_cache() {
        let cache = MokaCache::new(100);
        for i in 0..5_000u32 {
            cache.insert_tagged(format!("k{i}"), i, [format!("t{}", i % 7), "all".into()]);
        }
        cache.run_pending_tasks();
        let entries = cache.entry_count();
        assert!(entries <= 100, "{entries} entries");
        assert_eq!(cache.tag_index_len() as u64, 2 * entries);
        cache.invalidate_tags(&strings(&["all"]));
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(cache.tag_index_len(), 0);
    }

    #[test]
    fn expired_entries_leave_the_index() {
        let cache: MokaCache<u32> = MokaCache::with_builder(
            Cache::builder().time_to_live(std::time::Duration::from_millis(1)),
        );
        cache.insert_tagged("k", 1, ["t"]);
        std::thread::sleep(std::time::Duration::from_millis(5));
        cache.run_pending_tasks();
        assert_eq!(cache.tag_index_len(), 0);
    }

    #[test]
    fn concurrent_fills_and_purges_leave_no_tagged_entry_behind() {
        let cache = MokaCache::new(10_000);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let cache = cache.clone();
                s.spawn(move || {
                    for i in 0..2_000u32 {
                        cache.insert_tagged(format!("k{t}:{i}"), i, ["shared"]);
                        if i % 100 == 0 {
                            cache.invalidate_tags(&strings(&["shared"]));
                        }
                    }
                });
            }
        });
        cache.invalidate_tags(&strings(&["shared"]));
        cache.run_pending_tasks();
        assert_eq!(
            cache.entry_count(),
            0,
            "every entry was filed under the tag"
        );
        assert_eq!(cache.tag_index_len(), 0);
    }
}

//! The tags of the computation running in this task: [`tag`] and [`tags`] add to the innermost memoized
//! body's scope, and the tags of every memoized call the body makes are added as well, hit or miss. An
//! answer built on a retrieval tagged `doc:42` is tagged `doc:42` too.
//!
//! An entry's tags come from three places, gathered here while its memoized body runs:
//! - the function's static tags, `#[pg_cached(tags("corpus"))]`;
//! - [`tag`] and [`tags`], called from inside the body (a task-local scope set by the memoized call);
//! - every memoized call the body makes: the inner entry's tags, whether it was a hit or a miss.
//!
//! The same scope gathers the body's [`Usage`] ([`usage`]): what it reports, plus the usage of every
//! memoized call it makes (a miss's gathered usage, a hit's stored usage), so that an answer built on a
//! memoized retrieval and a memoized generation carries what both cost.

use crate::entry::EntryMeta;
use crate::error::{CacheError, Result};
use crate::tags::{validate_tag, Tags};
use crate::usage::Usage;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    /// The tags of the computation running in this task, set by the memoized call that runs it.
    static SCOPE: Arc<TagScope>;
}

/// Attaches `tag` to the entry being computed: the result of the innermost memoized call whose body is
/// running. Outside a memoized body it does nothing. The scope is task-local: a task the body spawns
/// (`tokio::spawn`) is outside it, so gather such a task's tags in the body (or await the memoized calls
/// there) rather than in the task.
///
/// An invalid tag (see [`validate_tag`]) is not dropped silently, since the entry could then outlive a change
/// it depends on: the result is returned but not stored, and the error is logged and counted.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize, Clone)] struct Doc { id: u64 }
/// async fn retrieve(docs: Vec<Doc>) -> Vec<Doc> {
///     for doc in &docs {
///         cache_runtime::tag(format!("doc:{}", doc.id));
///     }
///     docs
/// }
/// ```
pub fn tag(tag: impl AsRef<str>) {
    let _ = SCOPE.try_with(|scope| scope.add(tag.as_ref()));
}

/// [`tag`] for each of `tags`.
pub fn tags<I>(tags: I)
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let _ = SCOPE.try_with(|scope| {
        for tag in tags {
            scope.add(tag.as_ref());
        }
    });
}

/// Reports what the computation running in this task consumed (tokens, cost): added to the [`Usage`] stored
/// with the result of the innermost memoized call whose body is running. Call it as often as the body makes
/// metered calls; the reports are summed. Each later hit of the entry counts its usage as saved
/// ([`ProcessCounts::tokens_saved`](crate::ProcessCounts::tokens_saved),
/// [`ProcessCounts::cost_saved`](crate::ProcessCounts::cost_saved), the `pg_cached_tokens_saved_total` and
/// `pg_cached_cost_saved_micros_total` metrics).
///
/// Usage is inherited like tags: a memoized body that calls other memoized functions carries their usage
/// too, whether they computed (what their bodies reported) or hit (the usage stored with their entries), so
/// an outer entry's usage is what computing it from scratch would cost.
///
/// Outside a memoized body it does nothing: there is no entry to attach the usage to. The scope is
/// task-local, as for [`tag`]: report from the body's task, not from a task it spawns. For a memoized
/// stream, report from the stream's own code (it runs while the caller reads the stream); the usage is
/// stored with the entry when the stream ends.
///
/// ```
/// use cache_runtime::{usage, Usage};
/// async fn complete(prompt: &str) -> String {
///     // ... call the model; its response says how many tokens it used ...
///     let (input_tokens, output_tokens) = (prompt.len() as u64 / 4, 120);
///     usage(Usage { input_tokens, output_tokens, cost_micros_usd: input_tokens * 3 + output_tokens * 15 });
///     "answer".to_owned()
/// }
/// ```
pub fn usage(usage: Usage) {
    let _ = SCOPE.try_with(|scope| scope.add_usage(usage));
}

/// The scope of the computation running in this task, if any.
pub(crate) fn current() -> Option<Arc<TagScope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// The tags gathered for one computation.
#[derive(Debug, Default)]
pub(crate) struct TagScope {
    gathered: Mutex<Gathered>,
}

#[derive(Debug, Default)]
struct Gathered {
    tags: BTreeSet<String>,
    /// The first invalid tag given, if any (the tag, shortened, and what is wrong): the entry is then not
    /// stored.
    invalid: Option<(String, String)>,
    /// What the computation consumed: its own reports and its inner memoized calls'.
    usage: Usage,
}

impl TagScope {
    /// A scope holding a function's static tags (checked at compile time).
    pub(crate) fn new(static_tags: &[&str]) -> Arc<TagScope> {
        let scope = TagScope::default();
        scope.lock().tags.extend(static_tags.iter().map(|t| (*t).to_owned()));
        Arc::new(scope)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, tag: &str) {
        let mut gathered = self.lock();
        match validate_tag(tag) {
            Ok(()) => {
                if !gathered.tags.contains(tag) {
                    gathered.tags.insert(tag.to_owned());
                }
            }
            Err(CacheError::InvalidTag { tag, reason }) => {
                gathered.invalid.get_or_insert((tag, reason));
            }
            Err(_) => {}
        }
    }

    /// Adds the tags of an entry an inner memoized call used (already checked when they were stored).
    pub(crate) fn inherit(&self, tags: Option<&Tags>) {
        if let Some(tags) = tags {
            let mut gathered = self.lock();
            for tag in tags.iter() {
                if !gathered.tags.contains(tag) {
                    gathered.tags.insert(tag.clone());
                }
            }
        }
    }

    /// Takes in what an entry an inner memoized call was served carries: its tags and its usage.
    pub(crate) fn inherit_entry(&self, meta: &EntryMeta) {
        self.inherit(meta.tags.as_ref());
        self.add_usage(meta.usage);
    }

    /// Adds `usage` to what this computation consumed (a report of its body, or an inner memoized call's
    /// usage: a hit's stored usage).
    pub(crate) fn add_usage(&self, usage: Usage) {
        if !usage.is_zero() {
            self.lock().usage += usage;
        }
    }

    /// What this computation consumed so far.
    pub(crate) fn usage(&self) -> Usage {
        self.lock().usage
    }

    /// Takes in what an inner computation gathered: its usage, and its tags or its invalid tag (then this
    /// computation, which depends on it, is not stored either).
    pub(crate) fn absorb(&self, inner: &Result<Option<Tags>>, usage: Usage) {
        self.add_usage(usage);
        match inner {
            Ok(tags) => self.inherit(tags.as_ref()),
            Err(CacheError::InvalidTag { tag, reason }) => {
                self.lock().invalid.get_or_insert_with(|| (tag.clone(), reason.clone()));
            }
            Err(_) => {}
        }
    }

    /// The tags gathered so far, or the first invalid tag given.
    pub(crate) fn finish(&self) -> Result<Option<Tags>> {
        let gathered = self.lock();
        if let Some((tag, reason)) = &gathered.invalid {
            return Err(CacheError::InvalidTag { tag: tag.clone(), reason: reason.clone() });
        }
        crate::tags::check_count(gathered.tags.len())?;
        Ok((!gathered.tags.is_empty()).then(|| gathered.tags.iter().cloned().collect()))
    }
}

/// Runs `poll`, one step of a computation, with `scope` as the scope [`tag`] adds to: for a memoized stream,
/// whose body runs a little at each poll.
pub(crate) fn gather_step<R>(scope: &Arc<TagScope>, poll: impl FnOnce() -> R) -> R {
    SCOPE.sync_scope(Arc::clone(scope), poll)
}

/// Runs `body` with `scope` as the scope [`tag`] adds to.
pub(crate) async fn gather<F: Future>(scope: Arc<TagScope>, body: F) -> F::Output {
    SCOPE.scope(scope, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tag_adds_to_the_current_scope_only() {
        tag("outside"); // no scope: nothing happens
        let scope = TagScope::new(&["static"]);
        gather(Arc::clone(&scope), async {
            tag("doc:1");
            tags(["doc:2", "doc:1"]);
        })
        .await;
        let tags = scope.finish().ok().flatten();
        assert_eq!(tags.as_deref().map(|t| t.join(",")).as_deref(), Some("doc:1,doc:2,static"));

        let bad = TagScope::new(&[]);
        gather(Arc::clone(&bad), async { tag("a\0") }).await;
        assert!(bad.finish().is_err());
        assert!(bad.finish().is_err(), "stays invalid");
    }

    #[tokio::test]
    async fn usage_is_summed_in_the_innermost_scope_and_absorbed_outward() {
        usage(Usage { input_tokens: 1, ..Usage::default() }); // no scope: nothing happens
        let (outer, inner) = (TagScope::new(&[]), TagScope::new(&[]));
        let outer_body = async {
            usage(Usage { input_tokens: 10, output_tokens: 1, cost_micros_usd: 100 });
            gather(Arc::clone(&inner), async {
                usage(Usage { input_tokens: 5, ..Usage::default() });
                usage(Usage { output_tokens: 7, cost_micros_usd: 3, ..Usage::default() });
            })
            .await;
            outer.absorb(&inner.finish(), inner.usage());
        };
        gather(Arc::clone(&outer), outer_body).await;
        assert_eq!(inner.usage(), Usage { input_tokens: 5, output_tokens: 7, cost_micros_usd: 3 });
        assert_eq!(outer.usage(), Usage { input_tokens: 15, output_tokens: 8, cost_micros_usd: 103 });
    }
}

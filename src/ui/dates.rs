//! Images' creation dates, remembered by repository and config digest, so that a tag list
//! shown again reads each tag's manifest but not its config: a config never changes under its
//! digest. Only dates are kept (a few dozen bytes each, the `created` value capped), and at
//! most `MAX_DATES` of them; when full it starts over rather than track what was used last.

use crate::bounded_map::BoundedMap;
use crate::proxy::registry::Registry;

pub struct CreationDates(BoundedMap<(String, String), Option<String>>);

impl Default for CreationDates {
    fn default() -> Self {
        CreationDates(BoundedMap::new(MAX_DATES))
    }
}

/// Dates kept at most: ten thousand tags' worth is well under 2 MiB.
const MAX_DATES: usize = 10_000;
/// A `created` longer than any RFC 3339 time is not a date worth keeping.
const MAX_DATE_LEN: usize = 64;

impl CreationDates {
    /// When the image whose config is `digest` was created, as its config says; `None`
    /// when it does not say or cannot be read. Remembered once read.
    pub async fn created(
        &self,
        registry: &Registry,
        repository: &str,
        digest: &str,
    ) -> Option<String> {
        if let Some(known) = self.get(repository, digest) {
            return known;
        }
        // A failed read is not remembered: the next page asks again.
        let config = registry.config(repository, digest).await.ok()??;
        self.put(repository, digest, config.created.clone());
        config.created
    }

    fn get(&self, repository: &str, digest: &str) -> Option<Option<String>> {
        let key = (repository.to_string(), digest.to_string());
        self.0.get_if(&key, |_| true)
    }

    fn put(&self, repository: &str, digest: &str, created: Option<String>) {
        let created = created.filter(|c| c.len() <= MAX_DATE_LEN);
        // A date never goes stale, so when full none is kept over another.
        let key = (repository.to_string(), digest.to_string());
        self.0.insert(key, created, |_, _| false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_dates_are_kept_per_repository_and_bounded() {
        let dates = CreationDates::default();
        let when = "2026-01-01T00:00:00Z".to_string();
        dates.put("team/app", "sha256:aa", Some(when.clone()));
        assert_eq!(dates.get("team/app", "sha256:aa"), Some(Some(when)));
        assert_eq!(dates.get("other/app", "sha256:aa"), None);
        // Read, but no date worth keeping: known as dateless, not read again.
        dates.put("team/app", "sha256:bb", Some("9".repeat(MAX_DATE_LEN + 1)));
        assert_eq!(dates.get("team/app", "sha256:bb"), Some(None));
        for i in 0..MAX_DATES + 10 {
            dates.put("team/many", &format!("sha256:{i}"), None);
        }
        let kept = dates.0.len();
        assert!(kept <= MAX_DATES && kept > 0, "{kept} dates kept");
    }
}

//! What a backend remembers of its keys for a few minutes (type, versions):
//! facts that decide requests without a KMS call each time. Dropped on a
//! rotation through the sidecar and by every `metadata` call (which asks the
//! KMS, so that the service's revalidation sees a disabled key); another
//! change shows after `ttl`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a key's facts are reused.
pub const KEY_FACTS_TTL: Duration = Duration::from_secs(300);

/// Facts of type `T` by backend key reference, each kept [`KEY_FACTS_TTL`].
pub struct KeyFacts<T>(Mutex<HashMap<String, (Instant, Arc<T>)>>);

impl<T> Default for KeyFacts<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T> KeyFacts<T> {
    /// The facts of `id`, unless older than the TTL.
    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        let map = self.0.lock().expect("never poisoned");
        let (at, facts) = map.get(id)?;
        (at.elapsed() < KEY_FACTS_TTL).then(|| facts.clone())
    }

    /// Remembers `facts` of `id` from now on.
    pub fn put(&self, id: &str, facts: T) -> Arc<T> {
        let facts = Arc::new(facts);
        self.0
            .lock()
            .expect("never poisoned")
            .insert(id.to_owned(), (Instant::now(), facts.clone()));
        facts
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().expect("never poisoned").remove(id);
    }
}

//! What a reload changes, decided in one place by typed comparison: the
//! sections only a restart applies, the backends built anew, the keys whose
//! state carries over, and the caches and limits whose state carries over.
//! The modules that hold that state ask here; none compares configs itself.

use super::{BackendConfig, Config, KeyConfig};

/// The difference between the config in force (`old`) and a reloaded one.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    old: &'a Config,
    new: &'a Config,
}

/// The sections a reload cannot apply (they take effect at a restart).
const RESTART_ONLY: [&str; 4] = ["listen", "audit", "log", "telemetry"];

impl<'a> Changes<'a> {
    pub fn between(old: &'a Config, new: &'a Config) -> Self {
        Self { old, new }
    }

    /// The sections only a restart applies that differ.
    pub fn restart_only(&self) -> Vec<&'static str> {
        let (a, b) = (self.old, self.new);
        let differs = [
            a.listen != b.listen,
            a.audit != b.audit,
            a.log != b.log,
            a.telemetry != b.telemetry,
        ];
        (RESTART_ONLY.into_iter().zip(differs))
            .filter_map(|(section, differs)| differs.then_some(section))
            .collect()
    }

    /// Whether backend `name` would be built from the same inputs as
    /// before, so that the built one (credentials, circuit, sessions) goes
    /// on: its section, the limits its resilience layer takes, and the keys
    /// naming it for the backends that open their keys when built (AWS and
    /// Vault look keys up per call, so adding a key keeps them).
    pub fn backend_kept(&self, name: &str) -> bool {
        let (Some(a), Some(b)) = (
            backend_inputs(self.old, name),
            backend_inputs(self.new, name),
        ) else {
            return false;
        };
        a == b
    }

    /// Whether the key `alias` is defined as before, under the same
    /// metadata and public-key TTLs (its backend being kept is the caller's
    /// to check).
    pub fn key_kept(&self, alias: &str) -> bool {
        self.old.cache.metadata.ttl == self.new.cache.metadata.ttl
            && self.old.cache.public_keys == self.new.cache.public_keys
            && self
                .old
                .keys
                .get(alias)
                .is_some_and(|k| self.new.keys.get(alias) == Some(k))
    }

    /// Whether the data-key cache's settings are unchanged (its cached
    /// data keys then carry over).
    pub fn data_keys_kept(&self) -> bool {
        self.old.cache.data_keys == self.new.cache.data_keys
    }

    /// Whether the body budget is unchanged (the bodies in flight then
    /// keep holding it).
    pub fn body_budget_kept(&self) -> bool {
        let (a, b) = (&self.old.limits, &self.new.limits);
        (a.max_buffered_bytes, a.max_body) == (b.max_buffered_bytes, b.max_body)
    }

    /// Whether `limits.per_caller` is unchanged (each caller's token
    /// bucket then carries over).
    pub fn rate_limits_kept(&self) -> bool {
        self.old.limits.per_caller == self.new.limits.per_caller
    }
}

type BackendInputs<'c> = (
    &'c BackendConfig,
    Vec<(&'c String, &'c KeyConfig)>,
    super::Duration,
    usize,
);

fn backend_inputs<'c>(config: &'c Config, name: &str) -> Option<BackendInputs<'c>> {
    let section = config.backends.get(name)?;
    let opens_keys = !matches!(section, BackendConfig::Aws(_) | BackendConfig::Vault(_));
    let keys = (config.keys.iter())
        .filter(|(_, k)| opens_keys && k.backend == name)
        .collect();
    Some((
        section,
        keys,
        config.limits.backend_timeout,
        config.limits.backend_concurrency,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let text = format!(
            "backends:\n  d: {{type: local, dir: x}}\n  v: {{type: vault, address: \"http://127.0.0.1:1\", auth: {{method: token, token_file: t}}}}\nkeys:\n  k: {{backend: d, key: k}}\n{extra}"
        );
        Config::parse(
            &text,
            "t",
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .unwrap()
    }

    #[test]
    fn each_kind_of_change_is_told_apart() {
        let old = parse("");
        let same = Changes::between(&old, &old);
        assert!(same.restart_only().is_empty());
        assert!(same.backend_kept("d") && same.key_kept("k") && same.data_keys_kept());
        let new = parse("  k2: {backend: v, key: k2}\nlisten: {mode: \"0600\"}\n");
        let c = Changes::between(&old, &new);
        assert_eq!(c.restart_only(), ["listen"]);
        assert!(c.backend_kept("v"), "vault looks keys up per call");
        assert!(c.key_kept("k") && !c.key_kept("k2"));
        let new = parse("  k2: {backend: d, key: k2}\ncache: {metadata: {ttl: 5s}}\n");
        let c = Changes::between(&old, &new);
        assert!(!c.backend_kept("d"), "local opens its keys when built");
        assert!(!c.key_kept("k"), "the metadata TTL changed");
        let new = parse("limits: {max_body: 2MiB, per_caller: {rate: 10/s, burst: 5}}\n");
        let c = Changes::between(&old, &new);
        assert!(!c.body_budget_kept() && !c.rate_limits_kept());
        assert!(!c.backend_kept("missing"));
    }
}

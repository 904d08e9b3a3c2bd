//! Semantic checks of a parsed config: every problem, with its field path.

use super::{
    AuditConfig, BackendConfig, ByteSize, Config, DataVolume, NAME_RULE, Pkcs11KeyRef, Problem,
    Resilience, VaultAuth, check_azure_vault_url, check_vault_address, valid_name,
};
use crate::ops::OpOrAll;
use std::path::{Path, PathBuf};

/// Whether this binary was built with the cargo feature `feature` (one of
/// the backend types, or `otlp`): a slim build (`make run`) has `local` only.
pub fn built_with(feature: &str) -> bool {
    const BUILT: [(&str, bool); 7] = [
        ("local", cfg!(feature = "local")),
        ("aws", cfg!(feature = "aws")),
        ("vault", cfg!(feature = "vault")),
        ("azure", cfg!(feature = "azure")),
        ("gcp", cfg!(feature = "gcp")),
        ("pkcs11", cfg!(feature = "pkcs11")),
        ("otlp", cfg!(feature = "otlp")),
    ];
    BUILT.iter().any(|&(name, built)| built && name == feature)
}

impl Config {
    /// Every semantic problem of the configuration, each with its field path.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems_in(built_with)
    }

    /// [`Config::problems`] for a binary built with the cargo features that
    /// `built` accepts: a backend type or traces it lacks are problems.
    pub(crate) fn problems_in(&self, built: impl Fn(&str) -> bool) -> Vec<Problem> {
        let mut p = Found(Vec::new());
        built_in(self, &built, &mut p);
        listen(self, &mut p);
        compat(self, &mut p);
        backend_names(self, &mut p);
        keys(self, &mut p);
        callers(self, &mut p);
        backend_settings(self, &mut p);
        vault(self, &mut p);
        telemetry(self, &mut p);
        audit(self, &mut p);
        cache(self, &mut p);
        limits(self, &mut p);
        resilience(self, &mut p);
        log(self, &mut p);
        p.0
    }
}

/// The problems found so far.
struct Found(Vec<Problem>);

impl Found {
    fn bad(&mut self, path: String, message: String) {
        self.0.push(Problem { path, message });
    }
}

/// The backend types and traces this binary lacks.
fn built_in(c: &Config, built: &impl Fn(&str) -> bool, p: &mut Found) {
    let unbuilt = |what: &str, feature: &str| {
        format!(
            "{what} is not built into this binary: it needs the cargo feature `{feature}` \
             (`make build` builds every backend and traces; or `cargo build --features {feature}`)"
        )
    };
    for (name, backend) in &c.backends {
        let kind = backend.kind();
        if !built(kind) {
            p.bad(
                format!("backends.{name}.type"),
                unbuilt(&format!("type `{kind}`"), kind),
            );
        }
    }
    if c.telemetry.otlp.is_some() && !built("otlp") {
        p.bad("telemetry.otlp".into(), unbuilt("exporting traces", "otlp"));
    }
}

/// `listen`: the socket.
fn listen(c: &Config, p: &mut Found) {
    if c.listen.socket.as_os_str().is_empty() {
        p.bad("listen.socket".into(), "must be a path".into());
    }
    if c.listen.mode.0 & 0o7000 != 0 {
        p.bad(
            "listen.mode".into(),
            "setuid/setgid/sticky bits are not allowed".into(),
        );
    }
    if let Some(addr) = c.listen.tcp.filter(|a| !a.ip().is_loopback()) {
        p.bad(
            "listen.tcp".into(),
            format!(
                "{addr} is not a loopback address: the caller of a TCP connection is found in this network namespace's socket table, so only 127.0.0.1 or [::1] may be served (e.g. 127.0.0.1:8200)"
            ),
        );
    }
}

/// `compat`: the mount of the Vault-transit-compatible API.
fn compat(c: &Config, p: &mut Found) {
    let mount = &c.compat.vault_transit.mount;
    let segments_ok = mount.split('/').all(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !segments_ok {
        p.bad(
            "compat.vault_transit.mount".into(),
            format!("`{mount}` must be path segments of letters, digits, `-` and `_`, separated by `/` (e.g. `transit`)"),
        );
    }
    let first = mount.split('/').next().unwrap_or_default();
    if ["keys", "jwks", "jwt", "sys", "auth"].contains(&first) {
        p.bad(
            "compat.vault_transit.mount".into(),
            format!("`{mount}` would hide `/v1/{first}`, which the sidecar or Vault's clients use: choose another mount (e.g. `transit`)"),
        );
    }
}

/// `backends`: at least one, each well named.
fn backend_names(c: &Config, p: &mut Found) {
    if c.backends.is_empty() {
        p.bad("backends".into(), "at least one backend is required".into());
    }
    for name in c.backends.keys() {
        if !valid_name(name) {
            p.bad(format!("backends.{name}"), NAME_RULE.into());
        }
    }
}

/// `keys`: names, backends, ops.
fn keys(c: &Config, p: &mut Found) {
    for (alias, key) in &c.keys {
        let at = |f: &str| format!("keys.{alias}.{f}");
        if !valid_name(alias) {
            p.bad(format!("keys.{alias}"), NAME_RULE.into());
        }
        match c.backends.get(&key.backend) {
            None => p.bad(
                at("backend"),
                format!(
                    "backend `{}` is not defined (defined: {})",
                    key.backend,
                    c.backends.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(BackendConfig::Local(_)) if !valid_name(&key.key) => {
                p.bad(at("key"), format!("local key names: {NAME_RULE}"))
            }
            Some(_) => {}
        }
        if key.key.is_empty() {
            p.bad(at("key"), "must name the backend's key".into());
        }
        if matches!(&key.ops, Some(ops) if ops.is_empty()) {
            p.bad(
                at("ops"),
                "an empty list allows nothing; omit it for the default".into(),
            );
        }
        if key
            .ops
            .iter()
            .flatten()
            .any(|o| *o == OpOrAll::Op(crate::ops::Op::Metrics))
        {
            p.bad(
                at("ops"),
                "`metrics` is not an operation on a key; grant it in `callers`".into(),
            );
        }
    }
}

/// `callers`: who, which keys, which ops.
fn callers(c: &Config, p: &mut Found) {
    for (i, rule) in c.callers.iter().enumerate() {
        if rule.uids.is_empty() && rule.gids.is_empty() && rule.containers.is_empty() {
            p.bad(
                format!("callers[{i}]"),
                "a rule needs `uids`, `gids` or `containers`".into(),
            );
        }
        if let Some(j) = (rule.gids.iter()).position(|g| *g == crate::server::peer::NO_GID) {
            p.bad(
                format!("callers[{i}].gids[{j}]"),
                format!(
                    "{} is no group: it stands for the missing gid of a TCP caller (listen.tcp)",
                    crate::server::peer::NO_GID
                ),
            );
        }
        for (j, name) in rule.containers.iter().enumerate() {
            if !super::is_container_name(name) {
                p.bad(
                    format!("callers[{i}].containers[{j}]"),
                    format!(
                        "`{name}` is not a container name (lowercase letters, digits and `-`, at most 63)"
                    ),
                );
            }
        }
        if !rule.containers.is_empty() && c.listen.per_container_dir.is_none() {
            p.bad(
                format!("callers[{i}].containers"),
                "needs a socket per container: set `listen.per_container_dir` (the webhook does, with `kms-sidecar.io/socket-per-container: \"true\"` or `injection.socketPerContainer`)".into(),
            );
        }
        if rule.ops.is_empty() {
            p.bad(
                format!("callers[{i}].ops"),
                "must grant at least one operation or \"*\"".into(),
            );
        }
        for (j, pattern) in rule.keys.iter().enumerate() {
            let at = format!("callers[{i}].keys[{j}]");
            let stars = pattern.matches('*').count();
            if stars > 1 || (stars == 1 && !pattern.ends_with('*')) {
                p.bad(
                    at,
                    "a pattern is an alias, \"*\", or a prefix ending in `*`".into(),
                );
                continue;
            }
            let matches_any = match pattern.strip_suffix('*') {
                Some(prefix) => c.keys.keys().any(|k| k.starts_with(prefix)),
                None => c.keys.contains_key(pattern),
            };
            if !matches_any {
                p.bad(at, format!("`{pattern}` matches no key in `keys`"));
            }
        }
    }
}

/// Each backend type's own settings, and its keys' names.
fn backend_settings(c: &Config, p: &mut Found) {
    for (name, backend) in &c.backends {
        let refresh = match backend {
            BackendConfig::Aws(aws) => Some(aws.credential_refresh),
            BackendConfig::Azure(azure) => Some(azure.credential_refresh),
            _ => None,
        };
        if let Some(refresh) = refresh
            && (refresh.min > refresh.max || refresh.min.0.is_zero())
        {
            p.bad(
                format!("backends.{name}.credential_refresh"),
                "`min` must be above zero and at most `max`".into(),
            );
        }
        if let BackendConfig::Azure(azure) = backend
            && let Err(why) = check_azure_vault_url(&azure.vault_url)
        {
            p.bad(format!("backends.{name}.vault_url"), why);
        }
        if let BackendConfig::Pkcs11(p11) = backend {
            let at = format!("backends.{name}");
            if p11.pin_file.is_some() == p11.pin_env.is_some() {
                p.bad(
                    format!("{at}.pin_file"),
                    "give the user PIN's source: exactly one of `pin_file` and `pin_env`".into(),
                );
            }
            if p11.sessions == 0 {
                p.bad(format!("{at}.sessions"), "must be at least 1".into());
            }
            if p11.token_label.is_empty() || p11.token_label.len() > 32 {
                p.bad(
                    format!("{at}.token_label"),
                    "must be a token label of 1 to 32 characters".into(),
                );
            }
            for (alias, key) in &c.keys {
                if &key.backend == name
                    && let Err(why) = Pkcs11KeyRef::parse(&key.key)
                {
                    p.bad(format!("keys.{alias}.key"), why);
                }
            }
        }
        if let BackendConfig::Gcp(gcp) = backend
            && gcp.key_ring.is_none()
        {
            for (alias, key) in &c.keys {
                if &key.backend == name && !key.key.starts_with("projects/") {
                    p.bad(
                        format!("keys.{alias}.key"),
                        format!(
                            "backend `{name}` has no `key_ring`: name the key by its full resource name (projects/P/locations/L/keyRings/R/cryptoKeys/K)"
                        ),
                    );
                }
            }
        }
    }
}

/// `type: vault` backends.
fn vault(c: &Config, p: &mut Found) {
    for (name, backend) in &c.backends {
        let BackendConfig::Vault(vault) = backend else {
            continue;
        };
        let at = format!("backends.{name}");
        if let Some(address) = &vault.address
            && let Err(why) = check_vault_address(address)
        {
            p.bad(format!("{at}.address"), why);
        }
        if vault.mount.trim_matches('/').is_empty() {
            p.bad(format!("{at}.mount"), "must name the transit mount".into());
        }
        if vault.client_cert.is_some() != vault.client_key.is_some() {
            p.bad(
                format!("{at}.client_cert"),
                "`client_cert` and `client_key` go together".into(),
            );
        }
        if let VaultAuth::Jwt(jwt) = &vault.auth
            && jwt.token_file.is_none()
        {
            p.bad(
                format!("{at}.auth.token_file"),
                "the `jwt` method needs the token file to log in with".into(),
            );
        }
    }
}

/// `jwks` and `telemetry`.
fn telemetry(c: &Config, p: &mut Found) {
    for (i, alias) in c.jwks.public.iter().enumerate() {
        if !c.keys.contains_key(alias) {
            p.bad(
                format!("jwks.public[{i}]"),
                format!("`{alias}` is not a key in `keys`"),
            );
        }
    }
    if let Some(otlp) = &c.telemetry.otlp {
        if let Some(r) = otlp.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            p.bad(
                "telemetry.otlp.sample_ratio".into(),
                format!("{r} is not between 0 and 1"),
            );
        }
        if otlp.max_queue == Some(0) {
            p.bad(
                "telemetry.otlp.max_queue".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(e) = &otlp.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            p.bad(
                "telemetry.otlp.endpoint".into(),
                format!("`{e}` is not an http:// or https:// URL"),
            );
        }
        for (name, value) in &otlp.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.bad(
                    format!("telemetry.otlp.headers.{name}"),
                    "not a valid header name".into(),
                );
            } else if http::HeaderValue::from_str(value).is_err() {
                // The value is not quoted: it may be a credential.
                p.bad(
                    format!("telemetry.otlp.headers.{name}"),
                    "the value is not a valid header value".into(),
                );
            }
        }
        if !cfg!(feature = "otlp") {
            p.bad(
                "telemetry.otlp".into(),
                "this kms-sidecar was built without the `otlp` feature".into(),
            );
        }
    }
}

/// `audit`.
fn audit(c: &Config, p: &mut Found) {
    if let Some(cp) = c.audit.as_ref().and_then(|a| a.checkpoint.as_ref()) {
        if !c.keys.contains_key(&cp.key) {
            p.bad(
                "audit.checkpoint.key".into(),
                format!("`{}` is not a key in `keys`", cp.key),
            );
        }
        if cp.every_entries == 0 || cp.every.0.is_zero() {
            p.bad(
                "audit.checkpoint".into(),
                "`every_entries` and `every` must be above zero".into(),
            );
        }
    }
    if let Some(audit) = &c.audit {
        if audit.max_file_size.0 < 64 << 10 {
            p.bad(
                "audit.max_file_size".into(),
                "must be at least 64KiB".into(),
            );
        }
        if audit.max_files < 2 {
            p.bad(
                "audit.max_files".into(),
                "must be at least 2 (the current file and one rotated file)".into(),
            );
        }
        if let Some(why) = c.data_volume.as_ref().and_then(|v| outgrows(audit, v)) {
            p.bad("audit.max_file_size".into(), why);
        }
    }
}

/// `cache.data_keys`.
fn cache(c: &Config, p: &mut Found) {
    let dk = &c.cache.data_keys;
    if dk.ttl.0 < std::time::Duration::from_millis(100) {
        p.bad(
            "cache.data_keys.ttl".into(),
            "must be at least 100ms".into(),
        );
    }
    if dk.refresh_ahead >= dk.ttl {
        p.bad(
            "cache.data_keys.refresh_ahead".into(),
            format!("must be shorter than cache.data_keys.ttl ({})", dk.ttl),
        );
    }
    for (field, value) in [
        ("max_messages", dk.max_messages),
        ("max_bytes", dk.max_bytes.0),
        ("max_entries", dk.max_entries),
    ] {
        if value == 0 {
            p.bad(
                format!("cache.data_keys.{field}"),
                "must be at least 1".into(),
            );
        }
    }
    if c.cache.data_keys.revalidate.0.is_zero() {
        p.bad(
            "cache.data_keys.revalidate".into(),
            "must be above zero".into(),
        );
    }
}

/// `limits`.
fn limits(c: &Config, p: &mut Found) {
    if c.limits.max_body.0 < 1024 {
        p.bad("limits.max_body".into(), "must be at least 1KiB".into());
    }
    if c.limits.max_batch == 0 {
        p.bad("limits.max_batch".into(), "must be at least 1".into());
    }
    if c.limits.batch_concurrency == 0 {
        p.bad(
            "limits.batch_concurrency".into(),
            "must be at least 1".into(),
        );
    }
    let l = &c.limits;
    for (field, value) in [
        ("max_connections", l.max_connections),
        ("max_connections_per_caller", l.max_connections_per_caller),
        ("max_headers", l.max_headers),
        ("backend_concurrency", l.backend_concurrency),
    ] {
        if value == 0 {
            p.bad(format!("limits.{field}"), "must be at least 1".into());
        }
    }
    if l.max_buffered_bytes < l.max_body {
        p.bad(
            "limits.max_buffered_bytes".into(),
            format!(
                "must be at least limits.max_body ({}), or no body of that size could be read",
                l.max_body
            ),
        );
    }
    if l.replay_memory.0 < 64 << 10 {
        p.bad(
            "limits.replay_memory".into(),
            "must be at least 64KiB (128 bytes a remembered nonce)".into(),
        );
    }
    for (field, value) in [
        ("backend_timeout", l.backend_timeout),
        ("body_timeout", l.body_timeout),
        ("replay_window", l.replay_window),
        ("stream_idle_timeout", l.stream_idle_timeout),
    ] {
        if value.0.is_zero() {
            p.bad(format!("limits.{field}"), "must be above zero".into());
        }
    }
    if l.per_caller.is_some_and(|p| p.burst == 0) {
        p.bad(
            "limits.per_caller.burst".into(),
            "must be at least 1".into(),
        );
    }
}

/// Every backend's `timeout`, `retries` and `circuit`.
fn resilience(c: &Config, p: &mut Found) {
    for (name, backend) in &c.backends {
        let Resilience {
            timeout,
            retries,
            circuit,
        } = *backend.resilience();
        let at = format!("backends.{name}");
        if timeout.is_some_and(|t| t.0.is_zero()) {
            p.bad(format!("{at}.timeout"), "must be above zero".into());
        }
        if retries.max_attempts == 0 {
            p.bad(
                format!("{at}.retries.max_attempts"),
                "must be at least 1 (1 = no retries)".into(),
            );
        }
        if retries.initial_backoff > retries.max_backoff {
            p.bad(
                format!("{at}.retries.initial_backoff"),
                "must be at most `max_backoff`".into(),
            );
        }
        if circuit.failures == 0 || circuit.successes == 0 {
            p.bad(
                format!("{at}.circuit"),
                "`failures` and `successes` must be at least 1".into(),
            );
        }
    }
}

/// `log`.
fn log(c: &Config, p: &mut Found) {
    if let Err(e) = c.log.level.parse::<tracing_subscriber::EnvFilter>() {
        p.bad("log.level".into(), format!("not a tracing filter: {e}"));
    }
}

/// Why the audit log's rotation can outgrow the data volume it is written
/// to (see [`DataVolume`]); `None` when it fits, or lies elsewhere.
fn outgrows(audit: &AuditConfig, volume: &DataVolume) -> Option<String> {
    let (log, dir) = (lexical(&audit.path)?, lexical(&volume.path)?);
    if !log.starts_with(&dir) || log == dir {
        return None;
    }
    let files = u64::from(audit.max_files) + 1;
    let total = audit.max_file_size.0.saturating_mul(files);
    (total > volume.size_limit.0).then(|| {
        format!(
            "{} × ({} files + 1) = {} can outgrow the {} data volume (`data_volume.size_limit`, {}) that {} is written to: lower `audit.max_file_size` or `audit.max_files`, or write the log elsewhere",
            audit.max_file_size,
            audit.max_files,
            ByteSize(total),
            volume.size_limit,
            volume.path.display(),
            audit.path.display(),
        )
    })
}

/// An absolute path with its `.` and `..` resolved as text; `None` for a
/// relative one.
fn lexical(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::RootDir => out.push("/"),
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            Component::Prefix(_) => return None,
        }
    }
    path.is_absolute().then_some(out)
}

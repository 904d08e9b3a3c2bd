//! The one place that reads the environment: [`Env`], the process's or a
//! map in tests, is how every other module sees it (config overrides,
//! `RUST_LOG`, the variables backends take defaults and secrets from, see
//! [`super::resolved`]). `KMS_SIDECAR_…` variables override config fields.
//!
//! `KMS_SIDECAR_LISTEN__SOCKET=/run/kms.sock` sets `listen.socket`: the rest
//! of the name is the field path, segments separated by `__`, lower-cased.
//! Values are read as YAML scalars (so `4096`, `true` and `[1000, 1001]` keep
//! their types) and then validated like the file itself.

use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;

/// The environment variable prefix for overrides.
pub const PREFIX: &str = "KMS_SIDECAR_";

/// Variables with the prefix that are not config overrides.
const RESERVED: &[&str] = &["KMS_SIDECAR_CONFIG", "KMS_SIDECAR_SOCKET"];

/// Where environment variables come from: the process, or a map in tests.
pub trait Env: Send + Sync {
    fn vars(&self) -> Vec<(String, String)>;
    fn var(&self, name: &str) -> Option<String> {
        self.vars()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// One variable, without copying the others (some hold secrets).
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Applies every override found in `env` to the YAML tree, creating the
/// intermediate maps it needs. Returns the field paths that were overridden.
pub fn apply_overrides(root: &mut Value, env: &dyn Env) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    let mut vars = env.vars();
    vars.sort();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if RESERVED.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "{name}: empty path segment (use `__` between fields)"
            ));
        }
        set_path(root, &path, parse_scalar(&raw))
            .map_err(|e| format!("{name}: cannot set `{}`: {e}", path.join(".")))?;
        applied.push(path.join("."));
    }
    Ok(applied)
}

/// Reads an override as YAML, but keeps strings that YAML would turn into
/// something surprising (`0660` as a number) as the string they look like.
fn parse_scalar(raw: &str) -> Value {
    let looks_octal =
        raw.len() > 1 && raw.starts_with('0') && raw.bytes().all(|b| b.is_ascii_digit());
    if looks_octal {
        return Value::String(raw.to_owned());
    }
    match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(Value::Mapping(_)) | Err(_) => Value::String(raw.to_owned()),
        Ok(v) => v,
    }
}

fn set_path(node: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(map) = node else {
        return Err("a parent field is not a map".into());
    };
    let key = Value::String(path[0].clone());
    if path.len() == 1 {
        map.insert(key, value);
        return Ok(());
    }
    let child = map.entry(key).or_insert(Value::Null);
    set_path(child, &path[1..], value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_fields_with_yaml_types() {
        let mut root: Value = serde_yaml_ng::from_str("listen: {socket: a.sock}").unwrap();
        let env: BTreeMap<String, String> = [
            ("KMS_SIDECAR_LISTEN__SOCKET", "/run/b.sock"),
            ("KMS_SIDECAR_LISTEN__MODE", "0600"),
            ("KMS_SIDECAR_LIMITS__MAX_BATCH", "8"),
            ("KMS_SIDECAR_CONFIG", "/ignored"),
            ("OTHER", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let applied = apply_overrides(&mut root, &env).unwrap();
        assert_eq!(
            applied,
            ["limits.max_batch", "listen.mode", "listen.socket"]
        );
        assert_eq!(root["listen"]["socket"], Value::from("/run/b.sock"));
        assert_eq!(root["listen"]["mode"], Value::from("0600"));
        assert_eq!(root["limits"]["max_batch"], Value::from(8));
    }

    #[test]
    fn override_below_a_scalar_is_an_error() {
        let mut root: Value = serde_yaml_ng::from_str("listen: 3").unwrap();
        let env: BTreeMap<String, String> =
            [("KMS_SIDECAR_LISTEN__SOCKET".to_owned(), "x".to_owned())].into();
        let err = apply_overrides(&mut root, &env).unwrap_err();
        assert!(err.contains("listen.socket"), "{err}");
    }
}

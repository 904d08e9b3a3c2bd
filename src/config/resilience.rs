//! `backends.*.timeout`, `retries` and `circuit`: the resilience settings
//! every backend takes, one type ([`Resilience`]) written beside each
//! backend's own fields in the same YAML mapping ([`WithResilience`]).

use super::{Circuit, Duration, Retries};
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::ops::Deref;

/// The per-call timeout, retries and circuit breaker of a backend (SPEC §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resilience {
    /// Timeout of one backend call; default `limits.backend_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of retryable failures (SPEC §8).
    #[serde(default)]
    pub retries: Retries,
    /// The circuit breaker (SPEC §8).
    #[serde(default)]
    pub circuit: Circuit,
}

/// The fields of [`Resilience`], in the order the messages list them.
const RESILIENCE_FIELDS: [&str; 3] = ["timeout", "retries", "circuit"];

/// A backend's own settings (`T`) and its [`Resilience`], as one YAML
/// mapping: `{type: aws, region: …, timeout: 2s, retries: {…}}`. A field
/// that is neither is refused with the same message a single struct gives
/// (`unknown field `x`, expected one of `region`, …, `circuit``).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WithResilience<T> {
    #[serde(flatten)]
    pub settings: T,
    #[serde(flatten)]
    pub resilience: Resilience,
}

impl<T> Deref for WithResilience<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.settings
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for WithResilience<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut own = Mapping::deserialize(d)?;
        let fields = fields_of::<T>();
        for key in own.keys() {
            let name = key.as_str().unwrap_or_default();
            if !fields.contains(&name) && !RESILIENCE_FIELDS.contains(&name) {
                let expected: Vec<String> = (fields.iter().chain(&RESILIENCE_FIELDS))
                    .map(|f| format!("`{f}`"))
                    .collect();
                return Err(de::Error::custom(format_args!(
                    "unknown field `{}`, expected one of {}",
                    key.as_str()
                        .map_or_else(|| format!("{key:?}"), str::to_owned),
                    expected.join(", ")
                )));
            }
        }
        let mut shared = Mapping::new();
        for field in RESILIENCE_FIELDS {
            if let Some(value) = own.remove(field) {
                shared.insert(field.into(), value);
            }
        }
        let settings = T::deserialize(Value::Mapping(own)).map_err(de::Error::custom)?;
        let resilience =
            Resilience::deserialize(Value::Mapping(shared)).map_err(de::Error::custom)?;
        Ok(Self {
            settings,
            resilience,
        })
    }
}

/// The field names a derived struct deserializes (what serde passes to
/// `deserialize_struct`); empty for a type that is not a struct.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields;

    #[derive(Debug)]
    struct Found(&'static [&'static str]);

    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields found")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }

    impl<'de> Deserializer<'de> for Fields {
        type Error = Found;
        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    match T::deserialize(Fields) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AwsBackendConfig, LocalBackend};
    use super::*;

    #[test]
    fn fields_of_a_struct_are_its_serde_names() {
        assert_eq!(fields_of::<LocalBackend>(), ["dir"]);
        assert!(fields_of::<AwsBackendConfig>().contains(&"sts_endpoint"));
    }

    #[test]
    fn resilience_sits_beside_the_backends_own_fields() {
        let yaml = "dir: /k\ntimeout: 2s\nretries: {max_attempts: 1}\n";
        let c: WithResilience<LocalBackend> = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(c.dir, std::path::PathBuf::from("/k"));
        assert_eq!(c.resilience.timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.resilience.retries.max_attempts, 1);
        assert_eq!(c.resilience.circuit, Circuit::default());
        assert_eq!(
            serde_yaml_ng::to_string(&c).unwrap(),
            "dir: /k\ntimeout: 2s\nretries:\n  max_attempts: 1\n  initial_backoff: 50ms\n  max_backoff: 2s\n  max_elapsed: 10s\ncircuit:\n  failures: 5\n  open_for: 30s\n  successes: 2\n"
        );
        let err = serde_yaml_ng::from_str::<WithResilience<LocalBackend>>("dir: /k\nextra: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "unknown field `extra`, expected one of `dir`, `timeout`, `retries`, `circuit`"
            ),
            "{err}"
        );
    }
}

//! The operations a caller may be granted (`keys.*.ops`, `callers[].ops`,
//! metric labels): a module of its own, so that the config and the policy
//! both name them without depending on each other.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An operation, as named in `keys.*.ops`, `callers[].ops` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Sign,
    Verify,
    PublicKey,
    Encrypt,
    Decrypt,
    Datakey,
    Envelope,
    /// Re-encrypt a ciphertext under the key's current version.
    Rewrap,
    Mac,
    Rotate,
    /// Drop a key's cached data keys and public keys now (operators).
    Flush,
    Metadata,
    /// `GET /metrics` on the socket (operators); not an operation on a key.
    Metrics,
}

impl Op {
    pub const ALL: [Op; 13] = [
        Op::Sign,
        Op::Verify,
        Op::PublicKey,
        Op::Encrypt,
        Op::Decrypt,
        Op::Datakey,
        Op::Envelope,
        Op::Rewrap,
        Op::Mac,
        Op::Rotate,
        Op::Flush,
        Op::Metadata,
        Op::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Sign => "sign",
            Op::Verify => "verify",
            Op::PublicKey => "public_key",
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Datakey => "datakey",
            Op::Envelope => "envelope",
            Op::Rewrap => "rewrap",
            Op::Mac => "mac",
            Op::Rotate => "rotate",
            Op::Flush => "flush",
            Op::Metadata => "metadata",
            Op::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation or `"*"` (all operations) in a config list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOrAll {
    Op(Op),
    All,
}

impl std::str::FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Op::ALL.iter().map(|o| o.as_str()).collect();
                format!(
                    "unknown operation `{s}`, expected \"*\" or one of {}",
                    names.join(", ")
                )
            })
    }
}

impl<'de> Deserialize<'de> for OpOrAll {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "*" {
            return Ok(OpOrAll::All);
        }
        s.parse().map(OpOrAll::Op).map_err(serde::de::Error::custom)
    }
}

impl Serialize for OpOrAll {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OpOrAll::Op(op) => s.serialize_str(op.as_str()),
            OpOrAll::All => s.serialize_str("*"),
        }
    }
}

/// Whether `ops` (a config list) includes `op`.
pub fn grants(ops: &[OpOrAll], op: Op) -> bool {
    ops.iter()
        .any(|o| matches!(o, OpOrAll::All) || *o == OpOrAll::Op(op))
}

//! Workload identity tokens explained, not just failing. The commonest
//! set-up mistake with IRSA, Azure or GCP workload identity and Vault
//! kubernetes/jwt auth is a projected token with the wrong audience, an
//! expired or unmounted one, or one of another issuer; the STS or Vault then
//! answers with an opaque error. So the sidecar decodes (never verifies: the
//! KMS side does) every projected token its backends read, with
//! `jsonwebtoken`, and says what is wrong, naming the file:
//!
//! - at start a token that is there must be right, or the sidecar exits 2
//!   ([`IdentityToken::check_at_start`]); a file not there yet is left to
//!   readiness (the kubelet may still be writing it);
//! - at run time, every [`CHECK_EVERY`] and at each health check, a wrong,
//!   expired or missing token is logged, and it leads the readiness reason
//!   of a backend that is not ready (credentials it already has serve on
//!   until they expire, so a token problem alone does not stop the pod);
//! - `kms_sidecar_identity_token_expiry_seconds{backend}` says how long the
//!   token has left, and a token past its expiry that has not changed since
//!   the last look is warned about once: nothing is rotating it.

use crate::config::TokenRule;
use crate::metrics::Metrics;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a backend's token is looked at besides its health checks.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// A projected service-account token a backend reads, and what it must say.
#[derive(Debug)]
pub struct IdentityToken {
    backend: String,
    path: PathBuf,
    /// Where the path comes from, for messages (`AWS_WEB_IDENTITY_TOKEN_FILE`).
    source: &'static str,
    /// Audiences the KMS side accepts (any one); empty: not checked.
    audiences: Vec<String>,
    metrics: Arc<Metrics>,
    /// The last token seen (its SHA-256), and whether it was warned about
    /// as not rotated.
    last: Mutex<Option<([u8; 32], bool)>>,
}

/// What is wrong with a token: every message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{path} ({from}) does not exist: is the projected token volume mounted?")]
    Missing { path: String, from: &'static str },
    #[error("{path} ({from}) cannot be read: {why}")]
    Unreadable {
        path: String,
        from: &'static str,
        why: String,
    },
    #[error(
        "{path} ({from}) is not a JWT ({why}): a projected service-account token is three base64url parts"
    )]
    NotJwt {
        path: String,
        from: &'static str,
        why: String,
    },
    #[error(
        "{path} ({from}) has audience {found} where {expected} is expected: set the projected token's `audience`"
    )]
    Audience {
        path: String,
        from: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "{path} ({from}) expired at {at}: the kubelet refreshes projected tokens, so this file is not one or is not being refreshed"
    )]
    Expired {
        path: String,
        from: &'static str,
        at: String,
    },
    #[error(
        "{path} ({from}) has no `{claim}` claim: a projected service-account token has `iss`, `sub` and `exp`"
    )]
    NoClaim {
        path: String,
        from: &'static str,
        claim: &'static str,
    },
}

/// `a`, or `a` and `b`, or `a`, `b` or `c`, quoted.
fn listed(items: &[String], or: &str) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.as_slice() {
        [] => "none".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} {or} {last}", rest.join(", ")),
    }
}

/// The most characters of a token's claim (or of an error about it) that
/// a message quotes, and the most audiences it lists.
const SHOWN_CHARS: usize = 64;
const SHOWN_AUDIENCES: usize = 4;

/// Text from a token no one has verified, for a message that reaches
/// stderr, the logs and `/readyz`: control characters, newlines, quotes and
/// backslashes escaped as Rust's `Debug` does, cut at [`SHOWN_CHARS`], so
/// that a token cannot write lines of its own.
fn untrusted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// A token's audiences as [`listed`] prose, each [`untrusted`], at most
/// [`SHOWN_AUDIENCES`] of them.
fn audiences_found(found: &[String]) -> String {
    let shown: Vec<String> = found
        .iter()
        .take(SHOWN_AUDIENCES)
        .map(|a| untrusted(a))
        .collect();
    match found.len().saturating_sub(SHOWN_AUDIENCES) {
        0 => listed(&shown, "and"),
        more => {
            let quoted: Vec<String> = shown.iter().map(|a| format!("`{a}`")).collect();
            format!("{} and {more} more", quoted.join(", "))
        }
    }
}

impl IdentityToken {
    /// The checks of the token `backend` reads, as its config and the
    /// environment resolved it ([`TokenRule`]: which file, which audiences).
    pub fn of(backend: &str, rule: &TokenRule, metrics: &Arc<Metrics>) -> Arc<IdentityToken> {
        Arc::new(IdentityToken {
            backend: backend.to_owned(),
            path: rule.path.clone(),
            source: rule.from,
            audiences: rule.audiences.clone(),
            metrics: metrics.clone(),
            last: Mutex::new(None),
        })
    }

    /// At start: a token that is there must be right; one not there yet
    /// is the backend's readiness reason until it appears.
    pub fn check_at_start(&self) -> Result<(), Problem> {
        match self.check() {
            Ok(()) | Err(Problem::Missing { .. }) => Ok(()),
            Err(p) => Err(p),
        }
    }

    /// Looks at the token now and updates its expiry metric.
    pub fn check(&self) -> Result<(), Problem> {
        let path = self.path.display().to_string();
        let from = self.source;
        let text = match std::fs::read(&self.path) {
            Ok(text) => zeroize::Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Problem::Missing { path, from });
            }
            Err(e) => {
                let why = e.to_string();
                return Err(Problem::Unreadable { path, from, why });
            }
        };
        let exp = self.claims_problem(&text, &path)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics
            .identity_token_expiry
            .with_label_values(&[&self.backend])
            .set(exp as f64 - now as f64);
        self.expiry_problem(&text, &path, exp, now)
    }

    /// The token's expiry, once its audience and claims are right.
    fn claims_problem(&self, text: &[u8], path: &str) -> Result<u64, Problem> {
        let from = self.source;
        let token = String::from_utf8_lossy(text);
        let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token.trim())
            .map_err(|e| Problem::NotJwt {
                path: path.to_owned(),
                from,
                // The decoder's errors may quote the token's header.
                why: untrusted(&e.to_string()),
            })?
            .claims;
        let found: Vec<String> = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        if !self.audiences.is_empty() && !found.iter().any(|a| self.audiences.contains(a)) {
            return Err(Problem::Audience {
                path: path.to_owned(),
                from,
                found: audiences_found(&found),
                expected: listed(&self.audiences, "or"),
            });
        }
        for claim in ["iss", "sub"] {
            if !claims[claim].is_string() {
                let path = path.to_owned();
                return Err(Problem::NoClaim { path, from, claim });
            }
        }
        claims["exp"].as_u64().ok_or_else(|| Problem::NoClaim {
            path: path.to_owned(),
            from,
            claim: "exp",
        })
    }

    /// Whether the token (`text`, expiring at `exp`) has expired by `now`;
    /// an expired token seen before unchanged is warned about once.
    fn expiry_problem(&self, text: &[u8], path: &str, exp: u64, now: u64) -> Result<(), Problem> {
        let hash: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text)
            .as_ref()
            .try_into()
            .expect("32 bytes");
        let mut last = self.last.lock().expect("never poisoned");
        let seen_before = last.is_some_and(|(h, _)| h == hash);
        let warned = seen_before && last.is_some_and(|(_, w)| w);
        if exp > now {
            *last = Some((hash, false));
            return Ok(());
        }
        let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
        if seen_before && !warned {
            tracing::warn!(
                backend = %self.backend,
                file = %path,
                expired_at = %at,
                "the identity token has expired and its file has not changed since: nothing is rotating it (a projected serviceAccountToken volume is refreshed by the kubelet)"
            );
        }
        *last = Some((hash, seen_before || warned));
        Err(Problem::Expired {
            path: path.to_owned(),
            from: self.source,
            at: at.to_string(),
        })
    }

    /// Looks at the token every [`CHECK_EVERY`] while it is in use, and
    /// logs a problem when it appears or changes, and when it is gone.
    pub fn spawn_checks(self: &Arc<Self>) {
        let token: Weak<IdentityToken> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last: Option<Problem> = None;
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(token) = token.upgrade() else {
                    return;
                };
                let now = token.check().err();
                match (&last, &now) {
                    (_, Some(p)) if last.as_ref() != Some(p) => {
                        tracing::warn!(backend = %token.backend, problem = %p, "identity token problem");
                    }
                    (Some(_), None) => {
                        tracing::info!(backend = %token.backend, "identity token fine again");
                    }
                    _ => {}
                }
                last = now;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{audiences_found, listed, untrusted};

    /// A claim cannot start a line of its own, and is cut.
    #[test]
    fn claims_are_escaped_and_cut() {
        let forged = "x\n{\"level\":\"ERROR\",\"message\":\"forged\"}\r\u{1b}[31m";
        let shown = untrusted(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.starts_with("x\\n{\\\"level"), "{shown}");
        let long = untrusted(&"a".repeat(10_000));
        assert_eq!(long, format!("{}…", "a".repeat(64)));
        let many: Vec<String> = (0..100).map(|i| format!("aud{i}")).collect();
        assert_eq!(
            audiences_found(&many),
            "`aud0`, `aud1`, `aud2`, `aud3` and 96 more"
        );
    }

    #[test]
    fn lists_read_as_prose() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(listed(&l(&[]), "or"), "none");
        assert_eq!(listed(&l(&["a"]), "or"), "`a`");
        assert_eq!(listed(&l(&["a", "b", "c"]), "or"), "`a`, `b` or `c`");
    }
}

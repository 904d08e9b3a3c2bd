//! Pure authorization: may this caller (peer credentials of the socket) do
//! this operation on this key alias? No rule, no access (SPEC §7).

use crate::config::CallerRule;
pub use crate::ops::{Op, OpOrAll, grants};
use std::fmt;

/// Who is on a socket connection: its peer credentials (`SO_PEERCRED`),
/// and the container whose own socket it came through, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Often absent or 0 in a pod (no shared PID namespace).
    pub pid: Option<i32>,
    /// The socket `listen.per_container_dir/<name>/kms.sock` names the
    /// container `<name>`; `None` on the shared socket. (The names are those
    /// found at start, kept for the life of the process.)
    pub container: Option<&'static str>,
}

/// As errors name a caller: `uid 1000 gid 1000`, and `container api` on a
/// container's own socket.
impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        match self.container {
            Some(c) => write!(f, " (container {c})"),
            None => Ok(()),
        }
    }
}

/// A caller as the per-caller limits count it (see [`Policy::principal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Uid(u32),
    Gid(u32),
    /// A container on its own socket, whatever its uid.
    Container(&'static str),
}

/// The `callers` rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<CallerRule>,
}

impl Policy {
    pub fn new(rules: Vec<CallerRule>) -> Self {
        Self { rules }
    }

    /// May `caller` do `op` on the key `alias`?
    pub fn allows(&self, caller: &Caller, alias: &str, op: Op) -> bool {
        self.matching(caller)
            .any(|r| key_matches(&r.keys, alias) && grants(&r.ops, op))
    }

    /// May `caller` do anything at all with the key `alias`? (For listing.)
    pub fn allows_any(&self, caller: &Caller, alias: &str) -> bool {
        self.matching(caller).any(|r| key_matches(&r.keys, alias))
    }

    /// May `caller` do `op`, which concerns no key (`metrics`)? Any rule
    /// naming the caller and granting it will do, whatever its `keys`.
    pub fn allows_global(&self, caller: &Caller, op: Op) -> bool {
        self.matching(caller).any(|r| grants(&r.ops, op))
    }

    /// Who `caller` is to the per-caller limits, when some rule names it:
    /// the container, on a container's own socket (containers sharing a uid
    /// are apart); else its uid when a rule names the uid; else its gid
    /// (only rules naming gids match), so that a process switching uids
    /// inside that gid is still one caller. `None` when no rule names it
    /// (such a caller can do nothing but probes, so its connections are
    /// kept few and short).
    pub fn principal(&self, caller: &Caller) -> Option<Principal> {
        let mut matched = self.matching(caller).peekable();
        matched.peek()?;
        if let Some(container) = caller.container {
            return Some(Principal::Container(container));
        }
        if matched.any(|rule| !rule.uids.is_empty()) {
            return Some(Principal::Uid(caller.uid));
        }
        Some(Principal::Gid(caller.gid))
    }

    fn matching<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a CallerRule> + 'a {
        self.rules.iter().filter(move |r| {
            (r.uids.is_empty() || r.uids.contains(&caller.uid))
                && (r.gids.is_empty() || r.gids.contains(&caller.gid))
                && (r.containers.is_empty()
                    || caller
                        .container
                        .is_some_and(|c| r.containers.iter().any(|n| n == c)))
        })
    }
}

fn key_matches(patterns: &[String], alias: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => alias.starts_with(prefix),
        None => p == alias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(uids: &[u32], gids: &[u32], keys: &[&str], ops: &[OpOrAll]) -> CallerRule {
        CallerRule {
            uids: uids.to_vec(),
            gids: gids.to_vec(),
            containers: vec![],
            keys: keys.iter().map(|s| s.to_string()).collect(),
            ops: ops.to_vec(),
        }
    }

    #[test]
    fn rules_match_uid_gid_keys_and_ops() {
        let p = Policy::new(vec![
            rule(&[1000], &[], &["payments-*"], &[OpOrAll::Op(Op::Sign)]),
            rule(&[], &[2000], &["pii"], &[OpOrAll::All]),
            rule(&[3000], &[3000], &["*"], &[OpOrAll::Op(Op::Verify)]),
        ]);
        let c = |uid, gid| Caller {
            uid,
            gid,
            pid: None,
            container: None,
        };
        assert!(p.allows(&c(1000, 1), "payments-signing", Op::Sign));
        assert!(!p.allows(&c(1000, 1), "payments-signing", Op::Verify));
        assert!(!p.allows(&c(1000, 1), "pii", Op::Sign));
        assert!(p.allows(&c(5, 2000), "pii", Op::Rotate));
        assert!(!p.allows(&c(5, 2000), "pii2", Op::Rotate));
        assert!(p.allows(&c(3000, 3000), "anything", Op::Verify));
        assert!(
            !p.allows(&c(3000, 1), "anything", Op::Verify),
            "both uid and gid must match"
        );
        assert!(
            !p.allows(&c(4000, 4000), "pii", Op::Sign),
            "no rule, no access"
        );
        assert!(p.allows_any(&c(1000, 1), "payments-x"));
        assert!(!p.allows_any(&c(1000, 1), "pii"));
        assert!(
            p.allows_global(&c(5, 2000), Op::Metrics),
            "\"*\" grants metrics"
        );
        assert!(!p.allows_global(&c(1000, 1), Op::Metrics));
        assert_eq!(p.principal(&c(1000, 1)), Some(Principal::Uid(1000)));
        assert_eq!(p.principal(&c(4000, 4000)), None);
        // Only a gid rule names uid 5: it counts as its gid.
        assert_eq!(p.principal(&c(5, 2000)), Some(Principal::Gid(2000)));
        assert_eq!(p.principal(&c(3000, 3000)), Some(Principal::Uid(3000)));
    }

    #[test]
    fn container_rules_match_the_socket_a_caller_came_through() {
        let mut api = rule(&[], &[], &["payments"], &[OpOrAll::Op(Op::Sign)]);
        api.containers = vec!["api".into()];
        let mut both = rule(&[1000], &[], &["pii"], &[OpOrAll::Op(Op::Encrypt)]);
        both.containers = vec!["api".into(), "worker".into()];
        let p = Policy::new(vec![api, both]);
        let on = |container| Caller {
            uid: 1000,
            gid: 1000,
            pid: None,
            container,
        };
        assert!(p.allows(&on(Some("api")), "payments", Op::Sign));
        assert!(
            !p.allows(&on(Some("worker")), "payments", Op::Sign),
            "same uid, another container"
        );
        assert!(
            !p.allows(&on(None), "payments", Op::Sign),
            "the shared socket is no container"
        );
        assert!(p.allows(&on(Some("worker")), "pii", Op::Encrypt));
        let as_2000 = Caller {
            uid: 2000,
            ..on(Some("worker"))
        };
        assert!(
            !p.allows(&as_2000, "pii", Op::Encrypt),
            "uids and containers must both match"
        );
        assert_eq!(
            p.principal(&on(Some("api"))),
            Some(Principal::Container("api"))
        );
        assert_eq!(p.principal(&as_2000), None);
        assert_eq!(p.principal(&on(None)), None);
    }

    #[test]
    fn ops_parse_from_names_and_star() {
        let ops: Vec<OpOrAll> = serde_json::from_str(r#"["sign","*","public_key"]"#).unwrap();
        assert_eq!(
            ops,
            [
                OpOrAll::Op(Op::Sign),
                OpOrAll::All,
                OpOrAll::Op(Op::PublicKey)
            ]
        );
        assert!(serde_json::from_str::<Vec<OpOrAll>>(r#"["sing"]"#).is_err());
    }
}

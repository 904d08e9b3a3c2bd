//! `kms-sidecar audit verify`: checks the hash chain of an audit log across
//! its files (a rotated log, oldest first) and, with the checkpoint key's
//! public key, every signed checkpoint.

use super::{GENESIS, hash_of};
use crate::crypto::{self, Algorithm, SignInput};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The files of a rotated log, oldest first, when `path` is its current
/// file and `path.1`, `path.2`, … exist beside it; else just `path`.
pub fn rotated_set(path: &Path) -> Vec<PathBuf> {
    let numbered = |i: u32| PathBuf::from(format!("{}.{i}", path.display()));
    let mut older: Vec<PathBuf> = (1..).map(numbered).take_while(|p| p.exists()).collect();
    older.reverse();
    older.push(path.to_owned());
    older
}

/// What `audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// Checkpoint lines whose signature verified with the given public key.
    pub checkpoints: u64,
    /// Entries after the last verified checkpoint (no signature covers them).
    pub unsigned_tail: u64,
    /// The last entry's hash.
    pub head: String,
    /// The first entry's `prev` when the chain began in an earlier file.
    pub continues_from: Option<String>,
}

/// The first break in the chain: where and what.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct Broken {
    pub file: String,
    pub line: u64,
    pub problem: String,
}

/// Checks the chain across `files` in order (a rotated log's files, oldest
/// first), and with `public_key` (SubjectPublicKeyInfo DER of the checkpoint
/// key) every checkpoint's signature; then at least one checkpoint must be
/// there.
pub fn verify(files: &[PathBuf], public_key: Option<&[u8]>) -> Result<Verified, Broken> {
    let mut sources: Vec<(String, Box<dyn BufRead>)> = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Broken {
            file: name.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        sources.push((name, Box::new(BufReader::new(file))));
    }
    verify_sources(sources, public_key)
}

/// [`verify`] of one log held in memory (`name` is used in messages).
pub fn verify_bytes(name: &str, log: &[u8], public_key: Option<&[u8]>) -> Result<Verified, Broken> {
    verify_sources(vec![(name.to_owned(), Box::new(log))], public_key)
}

fn verify_sources<'a>(
    sources: Vec<(String, Box<dyn BufRead + 'a>)>,
    public_key: Option<&[u8]>,
) -> Result<Verified, Broken> {
    let mut expected: Option<String> = None;
    let mut continues_from = None;
    let mut entries = 0;
    let mut checkpoints = 0;
    let mut unsigned_tail = 0;
    let mut last = (String::new(), 0);
    for (file_name, reader) in sources {
        let broken = |line: u64, problem: String| Broken {
            file: file_name.clone(),
            line,
            problem,
        };
        for (i, line) in reader.split(b'\n').enumerate() {
            let n = i as u64 + 1;
            let line = line.map_err(|e| broken(n, format!("cannot read: {e}")))?;
            let map = match serde_json::from_slice::<Value>(&line) {
                Ok(Value::Object(map)) => map,
                _ => return Err(broken(n, "not an audit entry (a JSON object)".into())),
            };
            let (Some(Value::String(prev)), Some(Value::String(hash))) =
                (map.get("prev"), map.get("hash"))
            else {
                return Err(broken(n, "no `prev` and `hash`: not an audit entry".into()));
            };
            match &expected {
                Some(want) if want != prev => {
                    return Err(broken(
                        n,
                        "the chain is broken: `prev` is not the previous entry's hash (a line before this one was removed, inserted or reordered)".into(),
                    ));
                }
                None if prev != GENESIS => continues_from = Some(prev.clone()),
                _ => {}
            }
            if &hash_of(&map, prev) != hash {
                return Err(broken(
                    n,
                    "the entry was edited: its hash does not match its content".into(),
                ));
            }
            expected = Some(hash.clone());
            last = (file_name.clone(), n);
            if map.get("type").and_then(Value::as_str) == Some("checkpoint") {
                if let Some(spki) = public_key {
                    if !checkpoint_verifies(&map, prev, spki) {
                        return Err(broken(
                            n,
                            "the checkpoint's signature does not verify with this public key: the log was rewritten (or signed by another key)".into(),
                        ));
                    }
                    checkpoints += 1;
                    unsigned_tail = 0;
                }
            } else {
                entries += 1;
                unsigned_tail += 1;
            }
        }
    }
    if public_key.is_some() && checkpoints == 0 {
        return Err(Broken {
            file: last.0,
            line: last.1,
            problem: "no signed checkpoint in the log (is `audit.checkpoint` set?)".into(),
        });
    }
    Ok(Verified {
        entries,
        checkpoints,
        unsigned_tail,
        head: expected.unwrap_or_else(|| GENESIS.to_owned()),
        continues_from,
    })
}

/// Whether a checkpoint line's signature over its `prev` verifies.
fn checkpoint_verifies(map: &Map<String, Value>, prev: &str, spki: &[u8]) -> bool {
    let algorithm = map
        .get("algorithm")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok());
    let signature = map
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| B64.decode(s).ok());
    let (Some(algorithm), Some(signature)) = (algorithm, signature) else {
        return false;
    };
    let format = crypto::guess_format(algorithm, &signature);
    crypto::verify_locally(
        algorithm,
        spki,
        SignInput::Message(prev.as_bytes()),
        &signature,
        format,
    )
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, chain};
    use super::*;

    fn entry(i: u32) -> Entry {
        Entry {
            time: format!("2026-11-25T00:00:{i:02}.000000Z"),
            request_id: format!("req-{i}"),
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            container: None,
            op: "sign",
            key: Some("payments".into()),
            version: Some("1".into()),
            outcome: "ok",
            status: 200,
            latency_us: 80,
        }
    }

    fn write_log(path: &Path, n: u32) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        let mut lines = Vec::new();
        for i in 0..n {
            let (line, hash) = chain(&entry(i), &prev);
            prev = hash;
            lines.push(line);
        }
        std::fs::write(path, lines.concat()).unwrap();
        lines
    }

    fn check(path: &Path, lines: &[String]) -> Result<Verified, Broken> {
        std::fs::write(path, lines.concat()).unwrap();
        verify(&[path.to_owned()], None)
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = write_log(&path, 5);
        let ok = verify(std::slice::from_ref(&path), None).unwrap();
        assert_eq!(ok.entries, 5);
        assert_eq!(ok.continues_from, None);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"uid\":1000", "\"uid\":0");
        assert_eq!(check(&path, &edited).unwrap_err().line, 3);
        assert!(
            check(&path, &edited)
                .unwrap_err()
                .problem
                .contains("edited")
        );

        let mut removed = lines.clone();
        removed.remove(1);
        let e = check(&path, &removed).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("chain is broken"), "{e}");

        let mut reordered = lines.clone();
        reordered.swap(2, 3);
        assert_eq!(check(&path, &reordered).unwrap_err().line, 3);

        // An inserted line with a correct hash of its own still breaks the chain.
        let mut inserted = lines.clone();
        let prev = serde_json::from_str::<Value>(&lines[1]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        inserted.insert(2, chain(&entry(9), &prev).0);
        assert_eq!(check(&path, &inserted).unwrap_err().line, 4);

        let mut garbage = lines.clone();
        garbage.insert(0, "not json\n".into());
        assert_eq!(check(&path, &garbage).unwrap_err().line, 1);
    }

    #[test]
    fn the_chain_continues_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("audit.jsonl.1");
        let lines = write_log(&old, 4);
        let head = serde_json::from_str::<Value>(&lines[3]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        let new = dir.path().join("audit.jsonl");
        let (line, _) = chain(&entry(5), &head);
        std::fs::write(&new, line).unwrap();
        assert_eq!(
            verify(&[old.clone(), new.clone()], None).unwrap().entries,
            5
        );
        // The newer file alone is a chain continuing an earlier one.
        assert_eq!(
            verify(std::slice::from_ref(&new), None)
                .unwrap()
                .continues_from,
            Some(head)
        );
        // In the wrong order the break is found.
        assert!(verify(&[new, old], None).is_err());
    }
}

//! Independent tools the tests check the sidecar with: openssl for
//! certificates and signature verification.

use super::run_tool;
use std::path::{Path, PathBuf};

/// A CA and a server certificate for `localhost` signed by it, in `dir`
/// under `name`: returns (ca.pem, cert.pem, key.pem).
pub fn issue_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let s = |p: &PathBuf| p.display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("csr.pem"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=kms-sidecar-webhook",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "1",
            "-extfile",
            &s(&ext),
        ],
    ] {
        let (ok, _, err) = run_tool(
            "openssl",
            &args,
            "install openssl (apt-get install openssl)",
        );
        assert!(ok, "openssl {args:?}: {err}");
    }
    (ca, cert, key)
}

/// Verifies `signature` over `message` with the `openssl` command line and a
/// PEM public key (an implementation independent of the sidecar's).
/// `options` are `openssl dgst` options (`-sha384`, `-sigopt …`); Ed25519
/// (`options` empty and `ed25519` true) uses `pkeyutl -rawin`.
pub fn openssl_verifies(
    dir: &Path,
    pem: &str,
    message: &[u8],
    signature: &[u8],
    options: &[&str],
    ed25519: bool,
) -> bool {
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("openssl.pem"), pem).unwrap();
    std::fs::write(dir.join("openssl.msg"), message).unwrap();
    std::fs::write(dir.join("openssl.sig"), signature).unwrap();
    let (pk, msg, sig) = (p("openssl.pem"), p("openssl.msg"), p("openssl.sig"));
    let mut args: Vec<&str> = if ed25519 {
        vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", &pk, "-rawin", "-in", &msg, "-sigfile", &sig,
        ]
    } else {
        let mut a = vec!["dgst"];
        a.extend(options);
        a.extend(["-verify", &pk, "-signature", &sig, &msg]);
        a
    };
    if !ed25519 && !options.iter().any(|o| o.starts_with("-sha")) {
        args.insert(1, "-sha256");
    }
    let (ok, out, err) = run_tool(
        "openssl",
        &args,
        "install it with `apt-get install openssl`",
    );
    ok && (out.contains("Verified OK") || out.contains("Signature Verified Successfully"))
        || err.contains("Signature Verified Successfully")
}

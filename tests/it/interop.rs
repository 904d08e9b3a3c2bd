//! Signatures made by the sidecar verify with an independent implementation
//! (the `openssl` command line, not aws-lc) using the public key the API
//! returns.

use crate::harness::{Sidecar, b64, run_tool, unb64};
use serde_json::json;

const HINT: &str = "install it with `apt-get install openssl`";

fn openssl(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run_tool("openssl", args, HINT);
    (ok, format!("{out}{err}"))
}

#[tokio::test]
async fn openssl_verifies_what_the_sidecar_signs() {
    let s = Sidecar::start_default().await;
    let dir = s.dir.path();
    let msg_path = dir.join("msg.bin");
    let bad_path = dir.join("tampered.bin");
    let msg = b"pay 10 EUR to bob, ref 2026-11-24";
    std::fs::write(&msg_path, msg).unwrap();
    std::fs::write(&bad_path, b"pay 99 EUR to bob, ref 2026-11-24").unwrap();
    let p = |p: &std::path::Path| p.display().to_string();

    for key in ["ecdsa-p256", "ed25519", "rsa-3072"] {
        let pk = s.get(&format!("/v1/keys/{key}/public-key")).await.ok();
        let pem_path = dir.join(format!("{key}.pem"));
        std::fs::write(&pem_path, pk["pem"].as_str().unwrap()).unwrap();
        let signed = s
            .post_ok(
                &format!("/v1/keys/{key}/sign"),
                json!({"message": b64(msg)}),
            )
            .await;
        let sig_path = dir.join(format!("{key}.sig"));
        std::fs::write(&sig_path, unb64(&signed["signature"])).unwrap();

        let verify = |data: &std::path::Path| -> (bool, String) {
            match key {
                "ed25519" => openssl(&[
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-inkey",
                    &p(&pem_path),
                    "-rawin",
                    "-in",
                    &p(data),
                    "-sigfile",
                    &p(&sig_path),
                ]),
                "rsa-3072" => openssl(&[
                    "dgst",
                    "-sha256",
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                    "-verify",
                    &p(&pem_path),
                    "-signature",
                    &p(&sig_path),
                    &p(data),
                ]),
                _ => openssl(&[
                    "dgst",
                    "-sha256",
                    "-verify",
                    &p(&pem_path),
                    "-signature",
                    &p(&sig_path),
                    &p(data),
                ]),
            }
        };
        let (ok, out) = verify(&msg_path);
        assert!(
            ok && out.contains("Verified OK") || out.contains("Signature Verified Successfully"),
            "{key}: openssl says: {out}"
        );
        let (ok, out) = verify(&bad_path);
        assert!(!ok, "{key}: openssl accepted a tampered message: {out}");

        let v = s
            .post_ok(&format!("/v1/keys/{key}/verify"), json!({"message": b64(std::fs::read(&bad_path).unwrap()), "signature": signed["signature"]})).await;
        assert_eq!(v["valid"], false, "{key}");
    }
}

#[tokio::test]
async fn the_sidecar_verifies_what_openssl_would_accept_from_the_pem() {
    // The PEM and the JWK describe the same key: openssl's modulus of the PEM
    // equals the JWK's `n`.
    let s = Sidecar::start_default().await;
    let pk = s.get("/v1/keys/rsa-3072/public-key").await.ok();
    let pem_path = s.dir.path().join("rsa.pem");
    std::fs::write(&pem_path, pk["pem"].as_str().unwrap()).unwrap();
    let (ok, out) = openssl(&[
        "rsa",
        "-pubin",
        "-in",
        &pem_path.display().to_string(),
        "-noout",
        "-modulus",
    ]);
    assert!(ok, "{out}");
    let hex_modulus = out
        .trim()
        .trim_start_matches("Modulus=")
        .to_ascii_lowercase();
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        pk["jwk"]["n"].as_str().unwrap(),
    )
    .unwrap();
    let jwk_hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex_modulus, jwk_hex);

    let ec = s.get("/v1/keys/ecdsa-p256/public-key").await.ok();
    let ec_path = s.dir.path().join("ec.pem");
    std::fs::write(&ec_path, ec["pem"].as_str().unwrap()).unwrap();
    let (ok, out) = openssl(&[
        "ec",
        "-pubin",
        "-in",
        &ec_path.display().to_string(),
        "-noout",
        "-text",
    ]);
    assert!(
        ok && out.contains("P-256") || out.contains("prime256v1"),
        "{out}"
    );
}

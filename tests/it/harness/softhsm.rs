//! A SoftHSM2 token of its own for one test: a private token directory
//! (`SOFTHSM2_CONF` names it), a token initialized with `softhsm2-util`,
//! keys made with OpenSC's `pkcs11-tool --token-label`, as an operator
//! would, and the user PIN in a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

/// Where Debian and others put SoftHSM2's module.
const MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The kinds of key `pkcs11-tool` makes here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmKey {
    EcP256,
    EcP384,
    Rsa2048,
    Ed25519,
    Aes256,
    Hmac,
}

impl HsmKey {
    /// `pkcs11-tool` arguments that make the key.
    fn args(self) -> &'static [&'static str] {
        match self {
            HsmKey::EcP256 => &["--keypairgen", "--key-type", "EC:prime256v1"],
            HsmKey::EcP384 => &["--keypairgen", "--key-type", "EC:secp384r1"],
            HsmKey::Rsa2048 => &["--keypairgen", "--key-type", "rsa:2048"],
            HsmKey::Ed25519 => &["--keypairgen", "--key-type", "EC:edwards25519"],
            HsmKey::Aes256 => &[
                "--keygen",
                "--key-type",
                "AES:32",
                "--private",
                "--sensitive",
            ],
            HsmKey::Hmac => &[
                "--keygen",
                "--key-type",
                "GENERIC:32",
                "--private",
                "--sensitive",
            ],
        }
    }
}

/// A SoftHSM2 token in a temporary directory.
pub struct SoftHsm {
    pub dir: TempDir,
    pub module: &'static str,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub pin_file: PathBuf,
    pub label: String,
    pub pin: String,
}

/// The SoftHSM2 module, or a failure saying how to install it.
pub fn softhsm_module() -> &'static str {
    MODULES
        .into_iter()
        .find(|m| Path::new(m).exists())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2's module is not installed (looked in {MODULES:?}): `apt-get install softhsm2 opensc` (`make test` does)"
            )
        })
}

impl SoftHsm {
    /// A new token labelled `label`, its user PIN random and in `pin_file`.
    pub fn start(label: &str) -> SoftHsm {
        let module = softhsm_module();
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let pin = format!("pin-{}", uuid::Uuid::new_v4().simple());
        let hsm = SoftHsm {
            pin_file: dir.path().join("pin"),
            dir,
            module,
            conf,
            tokens,
            label: label.into(),
            pin,
        };
        std::fs::write(&hsm.pin_file, format!("{}\n", hsm.pin)).expect("write the PIN file");
        hsm.init_token(label);
        hsm
    }

    /// Initializes a token labelled `label` in a free slot, with the user PIN.
    fn init_token(&self, label: &str) {
        self.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "so-pin-1234",
                "--pin",
                &self.pin,
            ],
        );
    }

    /// Runs `program` with this token's `SOFTHSM2_CONF`; it must succeed.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {program} ({e}): `apt-get install softhsm2 opensc` (`make test` does)")
            });
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A second token labelled `label` in the same token directory (same
    /// user PIN): its own directory there.
    pub fn add_token(&self, label: &str) -> PathBuf {
        let before: Vec<PathBuf> = self.token_dirs();
        self.init_token(label);
        self.token_dirs()
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the new token's directory")
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tokens)
            .expect("the token directory")
            .map(|e| e.expect("a directory entry").path())
            .collect()
    }

    /// `pkcs11-tool` on this token, logged in as the user.
    pub fn tool(&self, args: &[&str]) -> Output {
        self.tool_on(&self.label, args)
    }

    /// `pkcs11-tool` on the token labelled `label`, logged in as the user.
    pub fn tool_on(&self, label: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "--module",
            self.module,
            "--token-label",
            label,
            "--login",
            "--pin",
            &self.pin,
        ];
        all.extend_from_slice(args);
        self.run("pkcs11-tool", &all)
    }

    /// Makes a key of `kind` labelled `label` with `CKA_ID` `id` (hex).
    pub fn create_key(&self, kind: HsmKey, label: &str, id: &str) {
        self.create_key_on(&self.label, kind, label, id);
    }

    /// [`Self::create_key`] on the token labelled `token`.
    pub fn create_key_on(&self, token: &str, kind: HsmKey, label: &str, id: &str) {
        let mut args = kind.args().to_vec();
        args.extend(["--label", label, "--id", id]);
        self.tool_on(token, &args);
    }

    /// The public key of `label`/`id` as DER, read with `pkcs11-tool`.
    pub fn public_key_der(&self, label: &str, id: &str) -> Vec<u8> {
        self.public_key_der_on(&self.label, label, id)
    }

    /// [`Self::public_key_der`] on the token labelled `token`.
    pub fn public_key_der_on(&self, token: &str, label: &str, id: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("{token}-{label}-{id}.der"));
        let out_s = out.to_str().expect("utf-8 path").to_owned();
        self.tool_on(
            token,
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--label",
                label,
                "--id",
                id,
                "-o",
                &out_s,
            ],
        );
        std::fs::read(&out).expect("the public key")
    }

    /// The backend as a YAML flow map.
    pub fn backend(&self) -> String {
        format!(
            "{{ type: pkcs11, module: \"{}\", token_label: \"{}\", pin_file: \"{}\" }}",
            self.module,
            self.label,
            self.pin_file.display()
        )
    }

    /// What the sidecar needs in its environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.display().to_string())]
    }
}

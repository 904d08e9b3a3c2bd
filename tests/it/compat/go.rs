//! Go's `github.com/hashicorp/vault/api` (`tests/clients/go/`, built by its
//! install.sh into the clients cache; every call through
//! `client.Logical()`): the scenario against OpenBao, and against the
//! sidecar over its socket (`VAULT_ADDR=unix://…`, which vault/api dials
//! itself).

use super::{Running, Target, installed, passed};
use std::time::Duration;
use tokio::process::Command;

#[tokio::test]
async fn go_vault_api_against_openbao() {
    scenario(Target::OpenBao).await;
}

#[tokio::test]
async fn go_vault_api_against_sidecar_local() {
    scenario(Target::Local).await;
}

#[tokio::test]
async fn go_vault_api_against_sidecar_vault() {
    scenario(Target::Vault).await;
}

async fn scenario(target: Target) {
    let app = installed("go", "transit-app");
    for file in ["main.go", "go.mod", "go.sum"] {
        let built = installed("go", &format!("src/{file}"));
        let source = format!("{}/tests/clients/go/{file}", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::fs::read(&built).ok() == std::fs::read(&source).ok(),
            "{} was built from another {source}: run `make test-deps` (tests/clients/install.sh)",
            app.display()
        );
    }
    let running = Running::start(target).await;
    // vault/api reads the environment (VAULT_CACERT, VAULT_NAMESPACE, …):
    // the app gets the contract's variables and nothing else.
    let run = Command::new(&app)
        .env_clear()
        .envs(running.client_env(&running.unix_addr()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Go app ends within 120 s")
        .expect("the Go app runs");
    passed("go vault/api", target, &out);
}

//! Go's `github.com/hashicorp/vault/api` (`tests/clients/go/`, built by its
//! install.sh into the clients cache; every call through
//! `client.Logical()`): the scenario against OpenBao, and against the
//! sidecar over its socket (`VAULT_ADDR=unix://…`, which vault/api dials
//! itself).

use super::{Running, Target, built_from_tree, installed, run_app};
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
    let sources = ["main.go", "go.mod", "go.sum"].map(|f| (format!("src/{f}"), f));
    let sources: Vec<(&str, &str)> = sources.iter().map(|(c, t)| (c.as_str(), *t)).collect();
    built_from_tree("go", &sources);
    let running = Running::start(target).await;
    let addr = running.unix_addr();
    run_app("go vault/api", &running, &addr, Command::new(&app)).await;
}

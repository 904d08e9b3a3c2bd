//! node-vault (`tests/clients/node/`, its generic `write` and `read` on
//! transit's paths): the scenario against OpenBao, and against the sidecar
//! over its TCP listener (node-vault speaks HTTP(S) only).

use super::{Running, Target, built_from_tree, installed, run_app};
use tokio::process::Command;

#[tokio::test]
async fn node_vault_against_openbao() {
    scenario(Target::OpenBao).await;
}

#[tokio::test]
async fn node_vault_against_sidecar_local() {
    scenario(Target::Local).await;
}

#[tokio::test]
async fn node_vault_against_sidecar_vault() {
    scenario(Target::Vault).await;
}

async fn scenario(target: Target) {
    let app = installed("node", "app.js");
    built_from_tree("node", &[("app.js", "app.js")]);
    let running = Running::start(target).await;
    let addr = running.tcp_addr();
    let mut run = Command::new("node");
    run.arg(&app);
    run_app("node-vault", &running, &addr, run).await;
}

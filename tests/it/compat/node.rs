//! node-vault (`tests/clients/node/`, its generic `write` and `read` on
//! transit's paths): the scenario against OpenBao, and against the sidecar
//! over its TCP listener (node-vault speaks HTTP(S) only).

use super::{Running, Target, installed, passed};

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
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node/app.js");
    assert!(
        std::fs::read(&app).ok() == std::fs::read(source).ok(),
        "{} is not {source}: run `make test-deps` (tests/clients/install.sh)",
        app.display()
    );
    let running = Running::start(target).await;
    let mut app_run = tokio::process::Command::new("node");
    // node-vault also reads VAULT_PREFIX, VAULT_NAMESPACE, VAULT_SKIP_VERIFY.
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("VAULT_")) {
        app_run.env_remove(name);
    }
    let out = app_run
        .arg(&app)
        .envs(running.client_env(&running.tcp_addr()))
        .output()
        .await
        .expect("`node` runs (Node.js is needed for the node-vault app)");
    passed("node-vault", running.target, &out);
}

//! Spring Vault's `VaultTransitOperations` (`tests/clients/java/`, built by
//! its install.sh into the clients cache) runs the scenario against each
//! target. Java cannot dial a Unix socket, so the app reaches the sidecar
//! over its loopback TCP listener.

use super::{Running, Target, installed, passed};
use std::time::Duration;
use tokio::process::Command;

async fn scenario(target: Target) {
    let jar = installed("java", "app.jar");
    let running = Running::start(target).await;
    let run = Command::new("java")
        .arg("-jar")
        .arg(&jar)
        .envs(running.client_env(&running.tcp_addr()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the java app ends within 120 s")
        .expect("java runs");
    passed("java", target, &out);
}

#[tokio::test]
async fn java_against_openbao() {
    scenario(Target::OpenBao).await;
}

#[tokio::test]
async fn java_against_sidecar_local() {
    scenario(Target::Local).await;
}

#[tokio::test]
async fn java_against_sidecar_vault() {
    scenario(Target::Vault).await;
}

//! Spring Vault's `VaultTransitOperations` (`tests/clients/java/`, built by
//! its install.sh into the clients cache) runs the scenario against each
//! target. Java cannot dial a Unix socket, so the app reaches the sidecar
//! over its loopback TCP listener.

use super::{Running, Target, built_from_tree, installed, run_app};
use tokio::process::Command;

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

async fn scenario(target: Target) {
    let jar = installed("java", "app.jar");
    let sources = [
        ("src/pom.xml", "pom.xml"),
        ("src/TransitApp.java", "src/main/java/app/TransitApp.java"),
    ];
    built_from_tree("java", &sources);
    let running = Running::start(target).await;
    let addr = running.tcp_addr();
    let mut run = Command::new("java");
    run.arg("-jar").arg(&jar);
    run_app("Spring Vault", &running, &addr, run).await;
}

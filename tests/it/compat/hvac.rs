//! hvac (`tests/clients/python/`, `client.secrets.transit`): the scenario
//! against OpenBao, and against the sidecar over its TCP listener and over
//! its socket (`VAULT_ADDR=unix://…`, through requests-unixsocket2).

use super::{Running, Target, built_from_tree, installed, run_app};
use tokio::process::Command;

#[tokio::test]
async fn hvac_against_openbao() {
    scenario(Target::OpenBao).await;
}

#[tokio::test]
async fn hvac_against_sidecar_local() {
    scenario(Target::Local).await;
}

#[tokio::test]
async fn hvac_against_sidecar_vault() {
    scenario(Target::Vault).await;
}

/// Runs the app once per way of reaching `target` (OpenBao has one), each
/// time against a target started afresh: the scenario rotates `aes`.
async fn scenario(target: Target) {
    let python = installed("python", "bin/python");
    let app = installed("python", "app.py");
    built_from_tree("python", &[("app.py", "app.py")]);
    let ways: &[&str] = match target {
        Target::OpenBao => &["tcp"],
        Target::Local | Target::Vault => &["tcp", "unix"],
    };
    for way in ways {
        let running = Running::start(target).await;
        let addr = match *way {
            "unix" => running.unix_addr(),
            _ => running.tcp_addr(),
        };
        let mut run = Command::new(&python);
        run.arg(&app);
        run_app(&format!("hvac over {way}"), &running, &addr, run).await;
    }
}

//! hvac (`tests/clients/python/`, `client.secrets.transit`): the scenario
//! against OpenBao, and against the sidecar over its TCP listener and over
//! its socket (`VAULT_ADDR=unix://…`, through requests-unixsocket2).

use super::{Running, Target, installed, passed};

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
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python/app.py");
    assert!(
        std::fs::read(&app).ok() == std::fs::read(source).ok(),
        "{} is not {source}: run `make test-deps` (tests/clients/install.sh)",
        app.display()
    );
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
        let mut app_run = tokio::process::Command::new(&python);
        // hvac also reads VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT/KEY.
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("VAULT_")) {
            app_run.env_remove(name);
        }
        let out = app_run
            .arg(&app)
            .envs(running.client_env(&addr))
            .output()
            .await
            .expect("the python app runs");
        passed(&format!("hvac over {way}"), running.target, &out);
    }
}

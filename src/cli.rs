//! The command line (clap): `serve`, `webhook`, `probe`, `config check`,
//! `audit verify`, and what each does — load the config, start telemetry, run the
//! app until SIGTERM/SIGINT. Exit codes: 0 ok, 2 bad usage or config, 1
//! runtime failure. `src/main.rs` only parses and calls [`run`].

use crate::config::{self, Config, ProcessEnv};
use crate::{app, shutdown, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Signing, encryption and data keys for a pod's apps over a Unix socket"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the sidecar (no config at all: the embedded local-keys default).
    Serve {
        /// Config file (default: $KMS_SIDECAR_CONFIG, then /etc/kms-sidecar/config.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the mutating admission webhook that injects the sidecar (HTTPS).
    #[cfg(feature = "webhook")]
    Webhook {
        /// PEM certificate chain (reloaded when the file changes).
        #[arg(long, required_unless_present = "check")]
        tls_cert: Option<PathBuf>,
        /// PEM private key.
        #[arg(long, required_unless_present = "check")]
        tls_key: Option<PathBuf>,
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: std::net::SocketAddr,
        /// The webhook's config: what it injects by default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validate the config (and the sidecar config it names), print it
        /// resolved and exit.
        #[arg(long)]
        check: bool,
    },
    /// Ask a running sidecar over its socket whether it is healthy or
    /// ready (an exec probe): exit 0 on 200, 1 otherwise.
    Probe {
        /// The sidecar's socket.
        #[arg(long, default_value = "./kms-sidecar.sock")]
        socket: PathBuf,
        #[arg(value_parser = crate::probe::PATHS)]
        path: String,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log (a rotated log's files oldest
    /// first; one path whose `.1`, `.2`, … files exist means them all); exit
    /// 1 naming the first edited, removed, inserted or reordered line.
    Verify {
        /// The checkpoint key's public key (PEM, as `GET
        /// /v1/keys/{name}/public-key` returns it): also check every signed
        /// checkpoint, so that a rewritten log is found.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print the resolved config, then (as YAML
    /// comments) each backend's settings as resolved with the environment:
    /// endpoints, token files and audiences, where secrets come from.
    Check { file: PathBuf },
}

/// Runs one command line; the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Probe { socket, path } => probe(&socket, &path),
        Command::Audit(AuditCommand::Verify { public_key, files }) => {
            audit_verify(public_key.as_deref(), files)
        }
        #[cfg(feature = "webhook")]
        Command::Webhook {
            tls_cert,
            tls_key,
            listen,
            config,
            check,
        } => serve_webhook(tls_cert, tls_key, listen, config, check),
        Command::Serve { config } => serve(config.as_deref()),
    }
}

/// `config check`: validate and print the resolved config, then each
/// backend's settings as resolved with the environment (as comments).
fn config_check(file: &std::path::Path) -> ExitCode {
    match Config::load(Some(file), &ProcessEnv) {
        Ok((config, _)) => {
            print!("{}", config.to_yaml());
            print!("{}", config.resolved_comments(&ProcessEnv));
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, &e),
    }
}

/// `probe`: ask a running sidecar over its socket.
fn probe(socket: &std::path::Path, path: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(crate::probe::probe(socket, path)) {
        Ok((200, body)) => {
            println!("{}", body.trim_end());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{status} {}", body.trim_end());
            ExitCode::from(1)
        }
        Err(e) => {
            println!("kms-sidecar probe: {e}");
            ExitCode::from(1)
        }
    }
}

/// `audit verify`: check an audit log's hash chain (and checkpoints).
fn audit_verify(public_key: Option<&std::path::Path>, files: Vec<PathBuf>) -> ExitCode {
    let spki = match public_key.map(read_public_key).transpose() {
        Ok(spki) => spki,
        Err(e) => {
            eprintln!("kms-sidecar audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    let files = match files.as_slice() {
        [one] => crate::audit::rotated_set(one),
        _ => files,
    };
    if files.len() > 1 {
        let names: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
        println!("checking {}", names.join(" → "));
    }
    match crate::audit::verify(&files, spki.as_deref()) {
        Ok(v) => {
            println!("ok: {} entries, chain intact, head {}", v.entries, v.head);
            if spki.is_some() {
                println!(
                    "{} signed checkpoints verified; {} entries after the last one",
                    v.checkpoints, v.unsigned_tail
                );
            }
            if let Some(start) = v.continues_from {
                println!("(the chain continues from an earlier file whose last hash is {start})");
            }
            ExitCode::SUCCESS
        }
        Err(broken) => {
            eprintln!("kms-sidecar audit verify: {broken}");
            ExitCode::from(1)
        }
    }
}

/// `webhook`: run the admission webhook, or check its config.
#[cfg(feature = "webhook")]
fn serve_webhook(
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    listen: std::net::SocketAddr,
    config: Option<PathBuf>,
    check: bool,
) -> ExitCode {
    use crate::webhook;
    let config = match webhook::Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kms-sidecar webhook: {e}");
            return ExitCode::from(2);
        }
    };
    let (Some(tls_cert), Some(tls_key), false) = (tls_cert, tls_key, check) else {
        print!("{}", serde_yaml_ng::to_string(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    };
    telemetry::init(&config.log, &ProcessEnv);
    let settings = webhook::Settings {
        listen,
        tls_cert,
        tls_key,
        config,
    };
    let runtime = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    match runtime.block_on(webhook::run(settings, shutdown::signal_received())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(2, &e),
    }
}

/// `serve`: load the config, start telemetry, run the sidecar until a
/// signal.
fn serve(config: Option<&std::path::Path>) -> ExitCode {
    let (config, source) = match Config::load(config, &ProcessEnv) {
        Ok(loaded) => loaded,
        Err(e) => return fail(2, &e),
    };
    let runtime = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    #[cfg(feature = "otlp")]
    let traces = match start_telemetry(&config, runtime.handle()) {
        Ok(traces) => traces,
        Err(code) => return code,
    };
    #[cfg(not(feature = "otlp"))]
    start_telemetry(&config);
    tracing::info!(config = %source, version = env!("CARGO_PKG_VERSION"), "starting kms-sidecar");
    let code = runtime.block_on(async {
        let file = match source {
            config::Source::File(path) => Some(path),
            config::Source::Embedded => None,
        };
        let app = match app::App::build(config, file).await {
            Ok(app) => app,
            Err(e) => return fail(2, &e),
        };
        match app.run(shutdown::signal_received()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(e.exit_code(), &e),
        }
    });
    // The last spans are exported on the runtime, which is still there.
    #[cfg(feature = "otlp")]
    if let Some(traces) = traces {
        traces.shutdown();
    }
    // The runtime's tasks end, and with them the last backends.
    drop(runtime);
    #[cfg(feature = "pkcs11")]
    crate::backend::pkcs11::finish(std::time::Duration::from_secs(5));
    code
}

/// Logging, and traces when configured: what shuts the exporter down
/// (flushing the last spans), or the exit code when traces cannot start.
#[cfg(feature = "otlp")]
fn start_telemetry(
    config: &Config,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<telemetry::otlp::Tracing>, ExitCode> {
    telemetry::init_with_traces(
        &config.log,
        config.telemetry.otlp.as_ref(),
        &ProcessEnv,
        runtime,
    )
    .map_err(|e| {
        telemetry::init(&config.log, &ProcessEnv);
        tracing::error!(error = %e, "kms-sidecar cannot run");
        eprintln!("kms-sidecar: {e}");
        ExitCode::from(2)
    })
}

/// Logging; a warning when traces are asked for by the environment but not
/// built in.
#[cfg(not(feature = "otlp"))]
fn start_telemetry(config: &Config) {
    telemetry::init(&config.log, &ProcessEnv);
    let wanted = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ];
    if let Some(var) = wanted
        .into_iter()
        .find(|v| config::Env::var(&ProcessEnv, v).is_some())
    {
        tracing::warn!(
            variable = var,
            "traces are not built into this binary (cargo feature `otlp`; `make build` has it): nothing is exported"
        );
    }
}

/// A PEM public key file as SubjectPublicKeyInfo DER.
fn read_public_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pem =
        pem::parse(text).map_err(|e| format!("{}: not a PEM public key: {e}", path.display()))?;
    Ok(pem.into_contents())
}

fn fail(code: u8, e: &dyn std::error::Error) -> ExitCode {
    tracing::error!(error = %e, "kms-sidecar cannot run");
    eprintln!("kms-sidecar: {e}");
    ExitCode::from(code)
}

//! The `tracing` subscriber: JSON lines when stderr is not a TTY (a
//! container), human text on a terminal. `RUST_LOG` overrides `log.level`.

use crate::config::{Log, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(log: &Log) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| log.level.clone());
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // vaultrs logs every Vault error answer at ERROR and rustify traces each
    // request; the vault backend logs failures itself, with context. Quiet
    // them unless asked for by name.
    for noisy in ["vaultrs", "rustify"] {
        if !spec.contains(noisy) {
            filter =
                filter.add_directive(format!("{noisy}=off").parse().expect("a valid directive"));
        }
    }
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests building several apps) keeps the first subscriber.
    drop(result);
}

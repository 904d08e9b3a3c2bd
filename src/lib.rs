//! kms-sidecar: signing, encryption and data keys for the app containers of a
//! pod, served as JSON over HTTP/1.1 on a Unix domain socket, while the sidecar
//! alone holds the pod's KMS credentials.
//!
//! The design is in `SPEC.md` (kept beside the project); `docs/api.md` shows
//! the API as a user sees it.
//!
//! # Layout
//!
//! - [`cli`]: the command line and what each subcommand does (`main.rs`
//!   only parses and calls it).
//! - [`app`]: composition root — builds backends, policy, metrics and the
//!   service from a [`config::Config`], and runs the server until shutdown.
//! - [`reload`]: config hot reload — the file watched (and SIGHUP), a new
//!   config validated and its changed backends healthy before the routes
//!   are swapped whole.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, for the drain.
//! - [`telemetry`]: the `tracing` subscriber (JSON off a TTY).
//! - [`probe`]: `kms-sidecar probe`, a health check over the socket for
//!   exec probes.
//! - [`config`]: typed configuration, YAML + `KMS_SIDECAR_…` overrides,
//!   validation that names every bad field.
//! - [`api`]: wire types and the error body with its stable codes — pure
//!   serde, no IO.
//! - [`server`]: the Unix socket (mode, stale socket), the accept loop with
//!   peer credentials and per-uid connection caps, the request-body budget,
//!   and the route table (every endpoint declared once) with the one
//!   pipeline each request runs through.
//! - [`keys`]: the configured aliases and what stands behind each.
//! - [`service`]: one operation end to end — policy → the rules every backend
//!   shares → backend; envelope operations included.
//! - [`policy`]: pure decision: may this caller do this op on this key?
//! - [`ops`]: the operations a caller may be granted, named by config and policy.
//! - [`backend`]: the [`backend::Backend`] trait, its error type, the
//!   credential refresher the KMSs share, the checks of projected identity
//!   tokens, and one module per KMS behind a cargo feature.
//! - [`envelope`]: envelope encryption — the v1 format, JSON and streaming.
//! - [`stream`]: request bodies as byte streams — idle timeout, read errors,
//!   the bounded drain of a lingering close.
//! - [`cache`]: the data-key cache (single-flight, refresh-ahead, LRU).
//! - [`crypto`]: algorithms and software crypto shared by backends (public key
//!   encodings, local signature verification).
//! - [`health`]: cached backend health checks behind `/readyz`.
//! - [`metrics`]: the Prometheus registry and backend-call instrumentation.
//! - [`admin`]: the optional TCP listener for probes and metrics.
//! - [`webhook`] (feature `webhook`): the mutating admission webhook that
//!   injects the sidecar into labelled pods.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod envelope;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod probe;
pub mod reload;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
#[cfg(feature = "webhook")]
pub mod webhook;

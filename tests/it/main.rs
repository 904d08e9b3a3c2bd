//! Integration tests: the real `kms-sidecar` binary on a temporary socket,
//! driven over the socket as an app would drive it.

mod harness;

mod adversarial;
mod api;
mod audit;
mod aws;
#[cfg(feature = "azure")]
mod azure;
#[cfg(feature = "local")]
mod batches;
mod callers;
#[cfg(feature = "webhook")]
mod chart;
mod cli;
#[cfg(all(feature = "local", feature = "vault"))]
mod compat;
mod conformance;
mod containers;
mod docs;
mod envelope;
mod errors;
#[cfg(feature = "gcp")]
mod gcp;
mod interop;
#[cfg(feature = "local")]
mod jwt;
mod kube;
mod lifecycle;
#[cfg(feature = "pkcs11")]
mod pkcs11;
#[cfg(feature = "local")]
mod reload;
mod resilience;
mod revocation;
mod traces;
#[cfg(feature = "vault")]
mod vault;
#[cfg(feature = "webhook")]
mod webhook;

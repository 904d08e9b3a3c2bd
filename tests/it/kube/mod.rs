//! Against a real Kubernetes control plane (issue 31): etcd and the real
//! kube-apiserver of the release `tests/kube/go.mod` pins, built by
//! `make kube-bin`, one control plane per test (`harness::ControlPlane`);
//! `chart` installs the Helm chart into it with the Helm CLI.

mod chart;
mod control_plane;
mod runner;
mod tokens;

//! Against a real Kubernetes control plane (issue 31): etcd and the real
//! kube-apiserver of the release `tests/kube/go.mod` pins, built by
//! `make kube-bin`, one control plane per test (`harness::ControlPlane`).

mod control_plane;

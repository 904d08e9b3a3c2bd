//! The webhook down (its process gone, as when no replica answers): the real
//! API server applies the chart's `webhook.failurePolicy` to the pods the
//! webhook should have seen, as `docs/kubernetes.md` says — `Ignore` (the default)
//! creates them without the sidecar, `Fail` refuses them and stores nothing.

use super::{create, injected, labelled_pod, stderr, stored};
use crate::harness::{CHART_DIR, KubeUp, eventually};
use std::time::Duration;

#[tokio::test]
async fn with_the_webhook_down_the_api_server_applies_the_chart_s_failure_policy() {
    let mut cp = KubeUp::default().chart(&[]).start().await;
    let out = create(&cp, &labelled_pod("apps", "while-up", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(injected(&stored(&cp, "apps", "while-up")));

    // Down: kube-up keeps the control plane running without it.
    let (_, pid) = cp
        .pids()
        .into_iter()
        .find(|(name, _)| name == "webhook")
        .expect("kube-up started the webhook");
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the webhook");
    eventually(
        Duration::from_secs(10),
        "kube-up notices the webhook gone",
        || {
            let said = cp.log("kube-up").contains("webhook exited");
            async move { said }
        },
    )
    .await;

    // Ignore: created, without the sidecar.
    let out = create(&cp, &labelled_pod("apps", "ignored", ""));
    assert!(
        out.status.success(),
        "Ignore refused the pod: {}",
        stderr(&out)
    );
    assert!(!injected(&stored(&cp, "apps", "ignored")));
    // kubectl is told nothing; the API server logs it (and counts it in
    // apiserver_admission_webhook_fail_open_count).
    assert_eq!(stderr(&out), "", "a warning for a failed-open call");
    let failing_open = "Failed calling webhook, failing open inject.kms-sidecar.io";
    eventually(Duration::from_secs(10), "the API server logs it", || {
        let logged = cp.log("kube-apiserver").contains(failing_open);
        async move { logged }
    })
    .await;

    // Fail: refused, naming the webhook that could not be called.
    cp.helm_ok(&[
        "upgrade",
        "kms-sidecar",
        CHART_DIR,
        "-n",
        "kms-system",
        "--reuse-values",
        "--set=webhook.failurePolicy=Fail",
    ]);
    let probe = labelled_pod("apps", "probe", "");
    eventually(
        Duration::from_secs(30),
        "the API server applies Fail",
        || {
            let out =
                cp.kubectl_with_input(&["create", "--dry-run=server", "-f", "-"], Some(&probe));
            async move { !out.status.success() }
        },
    )
    .await;
    let out = create(&cp, &labelled_pod("apps", "refused", ""));
    let err = stderr(&out);
    assert!(!out.status.success(), "Fail admitted the pod");
    assert!(
        err.contains("failed calling webhook \"inject.kms-sidecar.io\""),
        "{err}"
    );
    let out = cp.kubectl(&["-n", "apps", "get", "pod", "refused"]);
    assert!(!out.status.success(), "a refused pod was stored");
    let _ = cp.stop();
}

#!/usr/bin/env python3
"""Renders and validates the Helm chart, the plain manifests and the examples.

Run by `cargo nextest` (tests/it/chart.rs) as part of `make test`:

- lints the chart (Helm's own linter, strict), renders it with every values
  file in tests/chart/values/ and validates every object against the
  Kubernetes OpenAPI schemas of 1.29 to 1.33 with --strict (kubernetes-validate);
- checks what matters about the objects (webhook selectors, TLS wiring, one
  sidecar ConfigMap per namespace), and runs the real binary's `config
  check` and `webhook --check` on the configs the chart renders;
- expects every file in tests/chart/bad-values/ to be refused by
  values.schema.json;
- compares manifests/kms-sidecar.yaml with a fresh render of
  manifests/values.yaml (no drift) and validates manifests/examples/.

`--write` regenerates manifests/kms-sidecar.yaml instead of comparing
(`make manifests`). Helm is the helm-python-sdk wheel (Helm's Go library,
no helm binary); kubernetes-validate carries the schemas.
"""

import argparse
import base64
import json
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(f"{e}: run `make test-deps` (pip install helm-python-sdk kubernetes-validate)")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-sidecar"
MANIFESTS = ROOT / "manifests"
HERE = Path(__file__).resolve().parent
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
RELEASE, NAMESPACE = "kms-sidecar", "kms-system"
# cert-manager's kinds are CRDs, not in the Kubernetes schemas: checked by
# hand against the fields cert-manager.io/v1 requires.
CERT_MANAGER_REQUIRED = {
    "Issuer": [],
    "Certificate": ["secretName", "issuerRef"],
}

failures: list[str] = []
# Files handed to the binary and openssl; removed at exit.
TMP = Path(tempfile.mkdtemp(prefix="kms-sidecar-chart-"))


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


@functools.cache
def chart() -> "helm.Chart":
    return helm.Chart.load(str(CHART))


def render(values: dict) -> str:
    """The chart rendered as `helm template` prints it (NOTES left out)."""
    out = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    parts = []
    for path in sorted(out):
        if path.endswith("NOTES.txt") or path.endswith(".tpl"):
            continue
        for doc in out[path].split("\n---\n"):
            doc = doc.strip("\n")
            body = [l for l in doc.splitlines() if l.strip() and not l.lstrip().startswith("#") and l.strip() != "---"]
            if body:
                parts.append(f"---\n# Source: {path}\n{doc.removeprefix('---').strip(chr(10))}\n")
    return "".join(parts)


def objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(objs: list[dict], origin: str) -> None:
    for obj in objs:
        kind = obj.get("kind")
        name = f"{origin}: {kind}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("cert-manager.io/"):
            check(obj["apiVersion"] == "cert-manager.io/v1", f"{name}: cert-manager.io/v1")
            check(kind in CERT_MANAGER_REQUIRED, f"{name}: unexpected cert-manager kind")
            spec = obj.get("spec", {})
            for field in CERT_MANAGER_REQUIRED.get(kind, []):
                check(field in spec, f"{name}: spec.{field} is required")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{name} on {version}: {'.'.join(map(str, e.path))}: {e.message}")
            except Exception as e:  # SchemaNotFoundError and friends
                fail(f"{name} on {version}: {e}")


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def write_tmp(text: str) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=TMP, delete=False)
    with f:
        f.write(text)
    return Path(f.name)


def run_bin(args: list[str], text: str) -> subprocess.CompletedProcess:
    """This build's binary on `text` as a file (no KMS_SIDECAR_ overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_SIDECAR_")}
    return subprocess.run([os.environ["CHART_CHECK_BIN"], *args, str(write_tmp(text))],
                          capture_output=True, text=True, env=env)


def check_semantics(objs: list[dict], values: dict, origin: str) -> None:
    merged = chart().merge_values(values)
    web, tls, inj, side = merged["webhook"], merged["tls"], merged["injection"], merged["sidecar"]

    [deployment] = by_kind(objs, "Deployment")
    [service] = by_kind(objs, "Service")
    [pdb] = by_kind(objs, "PodDisruptionBudget")
    [mwc] = by_kind(objs, "MutatingWebhookConfiguration")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check(deployment["spec"]["replicas"] == web["replicas"], f"{origin}: replicas")
    check(service["spec"]["selector"] == labels, f"{origin}: the Service selects the webhook pods")
    check(pdb["spec"]["selector"]["matchLabels"] == labels, f"{origin}: the PDB selects the webhook pods")
    container = pod["spec"]["containers"][0]
    check(container["args"][0] == "webhook", f"{origin}: the container runs `webhook`")
    check_rbac(objs, merged, pod, origin)
    sc = container["securityContext"]
    check(sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], f"{origin}: hardened webhook")

    hooks = {h["name"]: h for h in mwc["webhooks"]}
    check(sorted(hooks) == ["ephemeral.kms-sidecar.io", "inject.kms-sidecar.io"], f"{origin}: webhooks {sorted(hooks)}")
    hook, ephemeral = hooks["inject.kms-sidecar.io"], hooks.get("ephemeral.kms-sidecar.io", {"name": "ephemeral"})
    for h in (hook, ephemeral):
        check(h.get("sideEffects") == "None", f"{origin}: {h['name']}: sideEffects None")
        check(h.get("admissionReviewVersions") == ["v1"], f"{origin}: {h['name']}: admission v1")
        check(
            h.get("objectSelector")
            == {"matchExpressions": [{"key": "kms-sidecar.io/inject", "operator": "In", "values": ["true", "True", "TRUE"]}]},
            f"{origin}: {h['name']}: objectSelector",
        )
    check(hook["failurePolicy"] == web["failurePolicy"], f"{origin}: failurePolicy")
    check(hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                             "scope": "Namespaced"}], f"{origin}: rules")
    # Ephemeral containers (kubectl debug) on injected pods are reviewed,
    # closed while the webhook is unreachable, through the same Service.
    check(ephemeral.get("rules") == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                      "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}],
          f"{origin}: ephemeral containers are reviewed: {ephemeral.get('rules')}")
    check(ephemeral.get("failurePolicy") == "Fail", f"{origin}: the ephemeral containers' review fails closed")
    check(ephemeral.get("clientConfig") == hook["clientConfig"], f"{origin}: one Service and CA for both webhooks")
    check(ephemeral.get("namespaceSelector") == hook["namespaceSelector"], f"{origin}: the same namespaces for both webhooks")
    ns_sel = hook["namespaceSelector"]
    check({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]} in ns_sel["matchExpressions"],
          f"{origin}: the release namespace is excluded")
    check(ns_sel.get("matchLabels", {}) == web["namespaceLabels"], f"{origin}: namespace opt-in labels")
    svc = hook["clientConfig"]["service"]
    check((svc["name"], svc["namespace"], svc["path"]) == (service["metadata"]["name"], NAMESPACE, "/mutate"),
          f"{origin}: clientConfig points at the Service")

    tls_secret = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if v["name"] == "tls")
    if tls["source"] == "generate":
        [secret] = by_kind(objs, "Secret")
        check(secret["metadata"]["name"] == tls_secret, f"{origin}: the Deployment mounts the generated Secret")
        check(hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"], f"{origin}: caBundle is the generated CA")
        ca, crt = (write_tmp(base64.b64decode(secret["data"][key]).decode()) for key in ("ca.crt", "tls.crt"))
        verify = subprocess.run(["openssl", "verify", "-CAfile", ca, crt], capture_output=True, text=True)
        check(verify.returncode == 0, f"{origin}: the certificate is signed by the CA: {verify.stderr}")
        text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", crt],
                              capture_output=True, text=True).stdout
        check(f"DNS:{svc['name']}.{NAMESPACE}.svc" in text, f"{origin}: the certificate names the Service: {text}")
        check(not by_kind(objs, "Certificate"), f"{origin}: no Certificate with generated TLS")
    else:
        [cert] = by_kind(objs, "Certificate")
        check(cert["spec"]["secretName"] == tls_secret, f"{origin}: the Deployment mounts the Certificate's Secret")
        check(f"{svc['name']}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"], f"{origin}: the Certificate names the Service")
        inject_from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        check(inject_from == f"{NAMESPACE}/{cert['metadata']['name']}", f"{origin}: inject-ca-from names the Certificate")
        check("caBundle" not in hook["clientConfig"], f"{origin}: cert-manager injects the caBundle")
        check(not by_kind(objs, "Secret"), f"{origin}: no generated Secret with cert-manager")
        issuers = by_kind(objs, "Issuer")
        check(len(issuers) == (0 if tls["certManager"]["issuerRef"] else 1), f"{origin}: self-signed Issuer only by default")

    # One sidecar ConfigMap per namespace, each a config the sidecar accepts.
    configmaps = by_kind(objs, "ConfigMap")
    sidecar_cms = [c for c in configmaps if c["metadata"]["name"] == side["configMapName"]]
    namespaces = sorted(c["metadata"]["namespace"] for c in sidecar_cms)
    check(namespaces == sorted({NAMESPACE, *side["namespaces"]}), f"{origin}: sidecar ConfigMaps in {namespaces}")
    for cm in sidecar_cms:
        r = run_bin(["config", "check"], cm["data"]["config.yaml"])
        check(r.returncode == 0, f"{origin}: `config check` refuses the rendered sidecar config: {r.stderr}")
    [webhook_cm] = [c for c in configmaps if "webhook.yaml" in c.get("data", {})]
    webhook_config = webhook_cm["data"]["webhook.yaml"].replace(
        "/etc/kms-sidecar/config.yaml", str(write_tmp(sidecar_cms[0]["data"]["config.yaml"])))
    r = run_bin(["webhook", "--check", "--config"], webhook_config)
    check(r.returncode == 0, f"{origin}: `webhook --check` refuses the rendered webhook config: {r.stderr}")
    if r.returncode == 0:
        resolved = yaml.safe_load(r.stdout)
        check(resolved["native_sidecar"] == inj["nativeSidecar"], f"{origin}: native_sidecar")
        check(resolved["failure_policy"] == web["failurePolicy"].lower(), f"{origin}: failure_policy follows failurePolicy")
        backends = {b["type"] for b in side["config"]["backends"].values()}
        expect_tokens = inj["tokens"] or sorted({"aws", "azure", "gcp", "vault"} & backends)
        check(sorted(resolved["tokens"]) == sorted(expect_tokens), f"{origin}: tokens {resolved['tokens']} != {expect_tokens}")
        check(resolved["image"] == container["image"], f"{origin}: sidecar image == webhook image")
        check(resolved["gcp"]["audience"] == (inj["gcp"]["audience"] or None), f"{origin}: gcp.audience")

    # GCP: the external-account file in every sidecar namespace, naming the
    # projected token the webhook mounts.
    gcp = inj["gcp"]
    gcp_cms = [c for c in configmaps if c["metadata"]["name"] == gcp["credentialsConfigMap"]]
    if not gcp["audience"]:
        check(not gcp_cms, f"{origin}: no GCP credentials without injection.gcp.audience")
    else:
        namespaces = sorted(c["metadata"]["namespace"] for c in gcp_cms)
        check(namespaces == sorted({NAMESPACE, *side["namespaces"]}), f"{origin}: GCP credentials in {namespaces}")
        for cm in gcp_cms:
            creds = json.loads(cm["data"]["credentials.json"])
            check(creds["type"] == "external_account" and creds["audience"] == gcp["audience"],
                  f"{origin}: the GCP credentials name the provider")
            check(creds["credential_source"]["file"] == "/var/run/secrets/kms-sidecar/gcp",
                  f"{origin}: the GCP credentials read the projected token")
            impersonation = creds.get("service_account_impersonation_url", "")
            check((gcp["serviceAccount"] in impersonation) if gcp["serviceAccount"] else not impersonation,
                  f"{origin}: service account impersonation follows injection.gcp.serviceAccount")


def check_rbac(objs: list[dict], merged: dict, pod: dict, origin: str) -> None:
    """The webhook's API access: get/list/watch on the sidecar's ConfigMaps,
    by name, bound to its service account; with checkConfigMaps false, no
    RBAC and no token."""
    roles, bindings = by_kind(objs, "ClusterRole"), by_kind(objs, "ClusterRoleBinding")
    check(not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding"), f"{origin}: no namespaced RBAC")
    [account] = by_kind(objs, "ServiceAccount")
    check(account.get("automountServiceAccountToken") is False, f"{origin}: other pods of the account get no token")
    check(pod["spec"].get("serviceAccountName") == account["metadata"]["name"], f"{origin}: the webhook's service account")
    enabled = merged["webhook"].get("checkConfigMaps")
    check(isinstance(enabled, bool), f"{origin}: webhook.checkConfigMaps (true by default) in values.yaml")
    enabled = enabled is not False
    check(pod["spec"].get("automountServiceAccountToken") is enabled,
          f"{origin}: the webhook's token is mounted only for ConfigMap lookups")
    if not enabled:
        check(not roles and not bindings, f"{origin}: no RBAC without ConfigMap lookups")
        return
    names = sorted({merged["sidecar"]["configMapName"], merged["injection"]["gcp"]["credentialsConfigMap"]})
    check(len(roles) == 1 and len(bindings) == 1, f"{origin}: one ClusterRole and its binding for ConfigMap lookups")
    if len(roles) != 1 or len(bindings) != 1:
        return
    [role], [binding] = roles, bindings
    rules = [{**r, "resourceNames": sorted(r.get("resourceNames", []))} for r in role["rules"]]
    check(rules == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": names,
                     "verbs": ["get", "list", "watch"]}], f"{origin}: least-privilege ClusterRole: {role['rules']}")
    check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": role["metadata"]["name"]}, f"{origin}: the binding names the ClusterRole")
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                   "namespace": NAMESPACE}], f"{origin}: bound to the webhook's service account only")


def pod_specs(obj: dict) -> list[dict]:
    """The pod spec of a Pod, or of a workload's pod template."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return [spec]
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    return [template["spec"]] if template else []


def check_sidecar_isolation(spec: dict, origin: str) -> None:
    """A pod with the sidecar written by hand keeps its other containers out
    of it, as the webhook does: the socket mounted read-only, no shared
    process namespace, no container running as the sidecar's uid."""
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    sidecar = next((c for c in containers if c["name"] == "kms-sidecar"), None)
    if sidecar is None:
        return
    check(not spec.get("shareProcessNamespace"), f"{origin}: shareProcessNamespace with the sidecar")

    def uid(c: dict):
        return (c.get("securityContext") or {}).get("runAsUser", (spec.get("securityContext") or {}).get("runAsUser"))

    for c in containers:
        if c is sidecar:
            continue
        for m in c.get("volumeMounts", []):
            if m["name"] == "kms-sidecar-socket":
                check(m.get("readOnly") is True, f"{origin}: {c['name']} mounts the socket writable")
        check(uid(c) is None or uid(c) != uid(sidecar), f"{origin}: {c['name']} runs as the sidecar's uid")


def manifest_from_chart() -> tuple[dict, str]:
    """manifests/values.yaml, and the chart rendered with it under a header
    made of that file's first paragraph."""
    values_text = (MANIFESTS / "values.yaml").read_text()
    header = "\n".join(f"#{line[1:]}" if line.startswith("#") else f"# {line}"
                       for line in values_text.split("\n\n")[0].splitlines())
    values = yaml.safe_load(values_text) or {}
    return values, (
        "# kms-sidecar webhook install for `kubectl apply` (no Helm): the chart in\n"
        "# charts/kms-sidecar rendered with manifests/values.yaml by `make manifests`;\n"
        "# a test fails if the two drift apart. Do not edit by hand.\n"
        f"{header}\n" + render(values)
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="regenerate manifests/kms-sidecar.yaml")
    args = parser.parse_args()

    if args.write:
        (MANIFESTS / "kms-sidecar.yaml").write_text(manifest_from_chart()[1])
        print("wrote manifests/kms-sidecar.yaml")
        return 0

    report = helm.lint(str(CHART), strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
    for m in report["messages"]:
        if m["severity"] >= 2:
            fail(f"helm lint: {m['path']}: {m['error']}")
    for e in report.get("errors") or []:
        fail(f"helm lint: {e}")

    for path in sorted((HERE / "values").glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        origin = f"values/{path.name}"
        try:
            chart().validate_schema(values)
            text = render(values)
        except helm.HelmError as e:
            fail(f"{origin}: {e}")
            continue
        objs = objects(text)
        validate(objs, origin)
        check_semantics(objs, values, origin)
        print(f"ok {origin}: {len(objs)} objects valid on {', '.join(KUBE_VERSIONS)}")

    for path in sorted((HERE / "bad-values").glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        try:
            chart().validate_schema(values)
            fail(f"bad-values/{path.name}: accepted by values.schema.json")
        except helm.HelmValuesError as e:
            reason = " ".join(str(e).split())[:150]
            print(f"ok bad-values/{path.name}: refused ({reason})")
        try:
            render(values)
            fail(f"bad-values/{path.name}: rendered without error")
        except helm.HelmError:
            pass

    values, expected = manifest_from_chart()
    actual = (MANIFESTS / "kms-sidecar.yaml").read_text()
    if actual != expected:
        fail("manifests/kms-sidecar.yaml differs from the chart rendered with manifests/values.yaml: run `make manifests`")
    else:
        objs = objects(actual)
        validate(objs, "manifests/kms-sidecar.yaml")
        check_semantics(objs, values, "manifests/kms-sidecar.yaml")
        print("ok manifests/kms-sidecar.yaml: no drift")
    for path in sorted((MANIFESTS / "examples").glob("*.yaml")):
        objs = objects(path.read_text())
        check(bool(objs), f"examples/{path.name}: empty")
        validate(objs, f"examples/{path.name}")
        for obj in objs:
            for spec in pod_specs(obj):
                check_sidecar_isolation(spec, f"examples/{path.name}")
        for cm in by_kind(objs, "ConfigMap"):
            config = cm.get("data", {}).get("config.yaml")
            if config is None:
                continue
            r = run_bin(["config", "check"], config)
            check(r.returncode == 0, f"examples/{path.name}: `config check` refuses ConfigMap {cm['metadata']['name']}: {r.stderr}")
        print(f"ok manifests/examples/{path.name}: {len(objs)} objects")

    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(TMP, ignore_errors=True)

#!/usr/bin/env python3
"""Renders and validates the Helm chart, the plain manifests and the examples.

Run by `cargo nextest` (tests/it/chart.rs) as part of `make test`:

- lints the chart (Helm's own linter, strict), renders it with every values
  file in tests/chart/values/ as for each Kubernetes version of 1.29 to 1.33
  (a file of KUBE_VERSIONS_OF: its own versions) and validates every object
  against that version's OpenAPI schemas with --strict (kubernetes-validate);
- checks what matters about the objects (webhook selectors, TLS wiring and
  its CA, a PodDisruptionBudget that lets a drain evict, one sidecar
  ConfigMap per namespace), and runs the real binary's `config check` and
  `webhook --check` on the configs the chart renders;
- expects native sidecars to be refused on clusters before 1.29;
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
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

try:
    import helm_python as helm
    from helm_python import _native
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(f"{e}: run `make test-deps` (pip install helm-python-sdk kubernetes-validate)")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-sidecar"
MANIFESTS = ROOT / "manifests"
HERE = Path(__file__).resolve().parent
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
# Values files for other clusters: rendered (.Capabilities.KubeVersion) and
# validated as for these versions instead.
KUBE_VERSIONS_OF = {"legacy-cluster.yaml": ["1.25.0", "1.28.0"]}
RELEASE, NAMESPACE = "kms-sidecar", "kms-system"
# cert-manager's kinds are CRDs, not in the Kubernetes schemas: checked by
# hand against the fields cert-manager.io/v1 requires.
CERT_MANAGER_REQUIRED = {
    "Issuer": [],
    "Certificate": ["secretName", "issuerRef"],
}
# An Issuer is exactly one of these.
ISSUER_TYPES = {"selfSigned", "ca", "vault", "venafi", "acme"}

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


def render(values: dict, kube_version: str = KUBE_VERSIONS[0]) -> str:
    """The chart rendered as `helm template --kube-version` prints it (NOTES
    left out). Chart.render does not take the cluster's version, which the
    library's render options do: they are passed as Chart.render passes its own."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "kube_version": f"v{kube_version}"}
    out = json.loads(_native.call_string("helm_render", chart()._raw(), json.dumps(values), json.dumps(opts)))
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


def validate(objs: list[dict], origin: str, versions: list[str] = KUBE_VERSIONS) -> None:
    for obj in objs:
        kind = obj.get("kind")
        name = f"{origin}: {kind}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("cert-manager.io/"):
            check(obj["apiVersion"] == "cert-manager.io/v1", f"{name}: cert-manager.io/v1")
            check(kind in CERT_MANAGER_REQUIRED, f"{name}: unexpected cert-manager kind")
            spec = obj.get("spec", {})
            for field in CERT_MANAGER_REQUIRED.get(kind, []):
                check(field in spec, f"{name}: spec.{field} is required")
            if kind == "Issuer":
                check(len(ISSUER_TYPES & spec.keys()) == 1, f"{name}: one issuer type of {sorted(ISSUER_TYPES)}")
            continue
        for version in versions:
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
    check_drains(pdb, web["replicas"], origin)
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
    svc = hook["clientConfig"].get("service") or {}
    host = urlparse(web["url"]).hostname if web["url"] else None
    if host:
        # A webhook outside the cluster: the URL instead of the Service.
        check(hook["clientConfig"].get("url") == web["url"] and not svc, f"{origin}: clientConfig is webhook.url")
    else:
        check((svc.get("name"), svc.get("namespace"), svc.get("path")) == (service["metadata"]["name"], NAMESPACE, "/mutate"),
              f"{origin}: clientConfig points at the Service")

    tls_secret = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if v["name"] == "tls")
    if tls["source"] == "generate":
        check_generated_tls(objs, tls_secret, hook, service["metadata"]["name"], host, origin)
    else:
        check_cert_manager(objs, tls_secret, mwc, tls["certManager"], service["metadata"]["name"], origin)

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
    by name (unless checkConfigMaps is false), and on namespaces, to tell
    OpenShift's (unless injection.openshift is true), bound to its service
    account; with neither, no RBAC and no token."""
    roles, bindings = by_kind(objs, "ClusterRole"), by_kind(objs, "ClusterRoleBinding")
    check(not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding"), f"{origin}: no namespaced RBAC")
    [account] = by_kind(objs, "ServiceAccount")
    check(account.get("automountServiceAccountToken") is False, f"{origin}: other pods of the account get no token")
    check(pod["spec"].get("serviceAccountName") == account["metadata"]["name"], f"{origin}: the webhook's service account")
    lookups = merged["webhook"].get("checkConfigMaps")
    check(isinstance(lookups, bool), f"{origin}: webhook.checkConfigMaps (true by default) in values.yaml")
    openshift = merged["injection"].get("openshift")
    check(isinstance(openshift, bool), f"{origin}: injection.openshift (false by default) in values.yaml")
    lookups, detect = lookups is not False, openshift is not True
    enabled = lookups or detect
    check(pod["spec"].get("automountServiceAccountToken") is enabled,
          f"{origin}: the webhook's token is mounted only for its lookups")
    if not enabled:
        check(not roles and not bindings, f"{origin}: no RBAC without lookups")
        return
    names = sorted({merged["sidecar"]["configMapName"], merged["injection"]["gcp"]["credentialsConfigMap"]})
    check(len(roles) == 1 and len(bindings) == 1, f"{origin}: one ClusterRole and its binding for the lookups")
    if len(roles) != 1 or len(bindings) != 1:
        return
    [role], [binding] = roles, bindings
    rules = [{**r, "resourceNames": sorted(r.get("resourceNames", []))} for r in role["rules"]]
    expected = []
    if lookups:
        expected.append({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": names,
                         "verbs": ["get", "list", "watch"]})
    if detect:
        expected.append({"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [],
                         "verbs": ["get", "list", "watch"]})
    check(rules == expected, f"{origin}: least-privilege ClusterRole: {role['rules']}")
    check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": role["metadata"]["name"]}, f"{origin}: the binding names the ClusterRole")
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                   "namespace": NAMESPACE}], f"{origin}: bound to the webhook's service account only")


def scaled(value, total: int) -> int:
    """A PDB's integer or percentage of `total` pods, rounded up as the
    disruption controller does."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def check_drains(pdb: dict, replicas: int, origin: str) -> None:
    """With every webhook pod healthy, the PDB allows at least one eviction,
    or a node drain never finishes."""
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        allowed = min(scaled(spec["maxUnavailable"], replicas), replicas)
    else:
        allowed = replicas - scaled(spec.get("minAvailable", 0), replicas)
    check(allowed >= 1, f"{origin}: the PDB allows {allowed} evictions of {replicas} healthy replicas: drains block")


def go_hours(duration: str) -> float:
    """A Go duration (cert-manager's) in hours."""
    units = {"h": 1, "m": 1 / 60, "s": 1 / 3600, "ms": 1 / 3.6e6, "us": 1 / 3.6e9, "µs": 1 / 3.6e9, "ns": 1 / 3.6e12}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", duration))


def openssl_x509(pem_file: Path, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-noout", *args, "-in", pem_file], capture_output=True, text=True).stdout


def check_generated_tls(objs: list[dict], tls_secret: str, hook: dict, service: str, host: str | None,
                        origin: str) -> None:
    """Helm's own CA: the caBundle trusts the Secret's certificate, which
    names the Service (and webhook.url's host), and the annotations an
    upgrade decides by (keep or renew) say what is in the certificate."""
    [secret] = by_kind(objs, "Secret")
    check(secret["metadata"]["name"] == tls_secret, f"{origin}: the Deployment mounts the generated Secret")
    check(hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"], f"{origin}: caBundle is the generated CA")
    ca, crt = (write_tmp(base64.b64decode(secret["data"][key]).decode()) for key in ("ca.crt", "tls.crt"))
    verify = subprocess.run(["openssl", "verify", "-CAfile", ca, crt], capture_output=True, text=True)
    check(verify.returncode == 0, f"{origin}: the certificate is signed by the CA: {verify.stderr}")
    text = openssl_x509(crt, "-ext", "subjectAltName")
    sans = sorted(re.findall(r"(?:DNS|IP Address):([^,\s]+)", text))
    check(f"{service}.{NAMESPACE}.svc" in sans, f"{origin}: the certificate names the Service: {text}")
    check(host is None or host in sans, f"{origin}: the certificate names webhook.url's host {host}: {text}")
    check(not by_kind(objs, "Certificate"), f"{origin}: no Certificate with generated TLS")
    notes = secret["metadata"].get("annotations") or {}
    check(sorted((notes.get("kms-sidecar.io/tls-names") or "").split(",")) == sans,
          f"{origin}: kms-sidecar.io/tls-names {notes.get('kms-sidecar.io/tls-names')!r} != the certificate's {sans}")
    end = openssl_x509(crt, "-enddate").strip().removeprefix("notAfter=")
    start = openssl_x509(crt, "-startdate").strip().removeprefix("notBefore=")
    try:
        cert_end, cert_start = (datetime.strptime(s, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc) for s in (end, start))
        not_after = datetime.fromisoformat(notes["kms-sidecar.io/tls-not-after"].replace("Z", "+00:00"))
        renew_after = datetime.fromisoformat(notes["kms-sidecar.io/tls-renew-after"].replace("Z", "+00:00"))
    except (KeyError, ValueError) as e:
        fail(f"{origin}: the Secret's validity annotations: {e!r} in {notes}")
        return
    check(abs((not_after - cert_end).total_seconds()) < 120,
          f"{origin}: kms-sidecar.io/tls-not-after {not_after} != the certificate's notAfter {cert_end}")
    # cert-manager's default: renew with a third of the validity left.
    third = (cert_end - cert_start) / 3
    check(abs((cert_end - renew_after) - third).total_seconds() < 3600 * 24 + 120,
          f"{origin}: kms-sidecar.io/tls-renew-after {renew_after} is not a third of the validity before {cert_end}")


def check_cert_manager(objs: list[dict], tls_secret: str, mwc: dict, cm: dict, service: str, origin: str) -> None:
    """cert-manager: the serving Certificate in the Deployment's Secret, and
    a CA bundle that a renewal of it leaves unchanged. By default the chart's
    own CA: a self-signed Issuer issues a CA Certificate (its key kept), a CA
    Issuer signs the serving Certificate with it, and inject-ca-from names
    the CA Certificate. A given issuerRef signs the serving Certificate."""
    certs = by_kind(objs, "Certificate")
    issuers = {i["metadata"]["name"]: i for i in by_kind(objs, "Issuer")}
    check(not by_kind(objs, "Secret"), f"{origin}: no generated Secret with cert-manager")
    check("caBundle" not in mwc["webhooks"][0]["clientConfig"], f"{origin}: cert-manager injects the caBundle")
    serving = [c for c in certs if c["spec"]["secretName"] == tls_secret]
    check(len(serving) == 1, f"{origin}: one Certificate in the Deployment's Secret {tls_secret}")
    if len(serving) != 1:
        return
    [serving] = serving
    check(f"{service}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"], f"{origin}: the Certificate names the Service")
    check(not serving["spec"].get("isCA"), f"{origin}: the serving Certificate is no CA")
    inject_from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    if cm["issuerRef"]:
        check(serving["spec"]["issuerRef"] == cm["issuerRef"], f"{origin}: the given issuerRef signs the serving Certificate")
        check(not issuers and len(certs) == 1, f"{origin}: no Issuer or other Certificate with a given issuerRef")
        check(inject_from == f"{NAMESPACE}/{serving['metadata']['name']}", f"{origin}: inject-ca-from names the Certificate")
        return
    ref = serving["spec"]["issuerRef"]
    ca_issuer = issuers.get(ref["name"]) if ref.get("kind") == "Issuer" else None
    ca_secret = ((ca_issuer or {}).get("spec") or {}).get("ca", {}).get("secretName")
    check(ca_secret is not None,
          f"{origin}: the serving Certificate must be signed by a CA Issuer, not {ref} ({(ca_issuer or {}).get('spec')}): "
          "a self-signed one changes the CA bundle at every renewal")
    ca_certs = [c for c in certs if c["spec"]["secretName"] == ca_secret]
    check(len(ca_certs) == 1, f"{origin}: one CA Certificate in the CA Issuer's Secret {ca_secret}")
    if ca_secret is None or len(ca_certs) != 1:
        return
    [ca] = ca_certs
    check(ca["spec"].get("isCA") is True, f"{origin}: the CA Certificate has isCA: true")
    root = issuers.get(ca["spec"]["issuerRef"]["name"], {}).get("spec", {})
    check(ca["spec"]["issuerRef"].get("kind") == "Issuer" and "selfSigned" in root,
          f"{origin}: a self-signed Issuer of the chart issues the CA")
    check(ca["spec"]["privateKey"].get("rotationPolicy") == "Never",
          f"{origin}: the CA keeps its key when it renews, so what it signed stays trusted")
    check(go_hours(ca["spec"]["duration"]) >= 10 * go_hours(serving["spec"]["duration"]),
          f"{origin}: the CA ({ca['spec']['duration']}) outlives many serving certificates ({serving['spec']['duration']})")
    check(inject_from == f"{NAMESPACE}/{ca['metadata']['name']}",
          f"{origin}: inject-ca-from {inject_from} names the CA Certificate {ca['metadata']['name']}")
    check(set(issuers) == {ref["name"], ca["spec"]["issuerRef"]["name"]} and len(certs) == 2,
          f"{origin}: the chart's CA, its Issuers and the serving Certificate only")


def check_native_sidecars() -> None:
    """Native sidecars need 1.29: before, the sidecar would be an init
    container that never exits. The render fails there, naming the fix;
    vendor versions (EKS, GKE) compare by their release."""
    for version in ["1.25.0", "1.28.0", "1.28.15-eks-7f0fe3b"]:
        try:
            render({}, version)
            fail(f"native sidecars: rendered for Kubernetes {version}, where the sidecar never exits")
        except helm.HelmError as e:
            message = " ".join(str(e).split())
            check("injection.nativeSidecar=false" in message and f"v{version}" in message,
                  f"native sidecars on {version}: the error names neither the fix nor the version: {message}")
    for version in ["1.29.0", "1.29.1-gke.1589018", "1.33.0"]:
        try:
            render({}, version)
        except helm.HelmError as e:
            fail(f"native sidecars: refused on {version}: {e}")
    print("ok native sidecars: refused before Kubernetes 1.29, rendered from 1.29")


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
        versions = KUBE_VERSIONS_OF.get(path.name, KUBE_VERSIONS)
        for i, version in enumerate(versions):
            try:
                chart().validate_schema(values)
                objs = objects(render(values, version))
            except helm.HelmError as e:
                fail(f"{origin} on {version}: {e}")
                break
            validate(objs, origin, [version])
            if i == 0:
                check_semantics(objs, values, origin)
        else:
            print(f"ok {origin}: {len(objs)} objects rendered and valid on {', '.join(versions)}")
    check_native_sidecars()

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

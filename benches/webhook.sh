#!/usr/bin/env bash
# Admission webhook latency and memory: the release binary's `webhook` over
# HTTPS (rustls) on 127.0.0.1, POSTed the AdmissionReview of a real pod
# (tests/webhook/pods/multi-container.yaml: two app containers, an init
# container, volumes, env) as the API server posts it, with oha. Two loads:
# 1 connection (latency of one review at a time, as an API server sends
# pods of one namespace) and 16 connections (a burst of scheduling). Prints
# p50/p90/p99, throughput, and the webhook's VmRSS idle and after the load;
# exits 1 on any failed review.
#
# Tunables: WEBHOOK_REQUESTS (per load, default 20000).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/target/release/kms-sidecar
REQUESTS=${WEBHOOK_REQUESTS:-20000}

BENCH_TAG=webhook-bench
# shellcheck source=benches/common.sh
source benches/common.sh
require curl python3 openssl
build_and_find_oha

work_dir webhook

# A CA and a serving certificate signed by it (rustls clients refuse a CA
# certificate presented as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -keyout "$WORK/ca.key" -out "$WORK/ca.crt" -subj "/CN=kms-sidecar bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$WORK/tls.key" -out "$WORK/tls.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/ext.cnf" -out "$WORK/tls.crt" 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" webhook --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" --listen "127.0.0.1:$PORT" \
    >>"$WORK/webhook.log" 2>&1 &
PID=$!
URL=https://localhost:$PORT
for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/ca.crt" "$URL/healthz" || true) == 200 ]] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/webhook.log" >&2; die "the webhook exited"; }
    sleep 0.1
done

python3 - "$ROOT/tests/webhook/pods/multi-container.yaml" >"$WORK/review.json" <<'PYEOF'
import json, sys, yaml
pod = yaml.safe_load(open(sys.argv[1]))
print(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "namespace": "apps", "operation": "CREATE",
    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
    "object": pod, "dryRun": False}}))
PYEOF
curl -sf --cacert "$WORK/ca.crt" -H 'content-type: application/json' --data-binary @"$WORK/review.json" "$URL/mutate" \
    | grep -q '"patchType":"JSONPatch"' || die "the review was not answered with a patch"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
RSS_IDLE=$(rss)
log "warming up"
oha -n 2000 -c 4 "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" --cacert "$WORK/ca.crt" -m POST \
    -H 'content-type: application/json' -D "$WORK/review.json" "$URL/mutate" >/dev/null
for c in 1 16; do
    log "$REQUESTS reviews over $c connection(s)"
    oha -n "$REQUESTS" -c "$c" "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" --cacert "$WORK/ca.crt" -m POST \
        -H 'content-type: application/json' -D "$WORK/review.json" "$URL/mutate" >"$WORK/c$c.json"
done
RSS_AFTER=$(rss)
HWM=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")

python3 - "$WORK" "$RSS_IDLE" "$RSS_AFTER" "$HWM" "$(stat -c %s "$WORK/review.json")" <<'PYEOF'
import json, sys
work, idle, after, hwm, size = sys.argv[1], *map(int, sys.argv[2:])
failed = 0
print(f"AdmissionReview of {size} bytes (multi-container pod), HTTPS, release build")
for c in (1, 16):
    r = json.load(open(f"{work}/c{c}.json"))
    codes = r.get("statusCodeDistribution", {})
    errors = r.get("errorDistribution", {})
    ok = codes.get("200", 0)
    total = sum(codes.values()) + sum(errors.values())
    failed += total - ok
    p = r["latencyPercentiles"]
    print(f"{c:>2} connection(s): {total} reviews, {r['summary']['requestsPerSec']:.0f}/s, "
          f"p50 {p['p50']*1000:.3f} ms, p90 {p['p90']*1000:.3f} ms, p99 {p['p99']*1000:.3f} ms, failed {total - ok} {errors or ''}")
print(f"VmRSS idle {idle/1024:.1f} MiB, after the loads {after/1024:.1f} MiB, peak (VmHWM) {hwm/1024:.1f} MiB")
if failed:
    sys.exit("FAIL: some reviews failed")
PYEOF

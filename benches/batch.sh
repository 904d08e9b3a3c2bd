#!/usr/bin/env bash
# A 64-item batch against 64 single calls, through the sidecar's vault
# backend to an OpenBao dev server on this machine (transit, a token of the
# README's policy): sign P-256 (`sign-batch` vs `sign`) and direct encrypt
# 1 KiB (`encrypt-batch` vs `encrypt`). One connection, one request at a
# time, as an app calling in a loop would: the single calls' mean latency
# × 64 against the batch's mean latency. Items run
# `limits.batch_concurrency` (8, the default) at a time.
#
# The report (markdown) goes to stdout and is appended to docs/benchmarks.md
# under "## bench-batch runs" (BENCH_BATCH_APPEND=0: only printed). Any
# non-200 answer fails the script.
#
# Tunables: BENCH_BATCH_REQUESTS (single calls measured, default 640; batches:
# a tenth), BENCH_BIN_DIR (use DIR/kms-sidecar, build nothing), BAO_BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_TAG=bench-batch
# shellcheck source=benches/common.sh
source benches/common.sh
require curl python3

SINGLES=${BENCH_BATCH_REQUESTS:-640}
BATCHES=$((SINGLES / 10))
ITEMS=64
APPEND=${BENCH_BATCH_APPEND:-1}
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$BENCH_BIN_DIR/kms-sidecar
    BUILD=false build_and_find_oha
else
    build_and_find_oha
    BIN=$PWD/target/release/kms-sidecar
fi
find_bao
work_dir batch
BAO_PID=""
trap 'stop_pid "$BAO_PID" bao; _work_dir_cleanup' EXIT

post() { curl -sS --fail-with-body --max-time 10 -H 'content-type: application/json' "$@"; }

# --- OpenBao: transit, the README's policy, a token -------------------------------
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=http://127.0.0.1:$PORT
ROOT=root-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BAO" server -dev -dev-root-token-id="$ROOT" -dev-listen-address="127.0.0.1:$PORT" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
wait_until_200 "$BAO_PID" bao "$WORK/bao.log" 60 "$ADDR/v1/sys/health"
bao() { post -X "$1" -H "X-Vault-Token: $ROOT" --data-binary "$3" "$ADDR/v1/$2"; }
bao POST sys/mounts/transit '{"type":"transit"}' >/dev/null
bao POST transit/keys/bench-p256 '{"type":"ecdsa-p256"}' >/dev/null
bao POST transit/keys/bench-aes '{"type":"aes256-gcm96"}' >/dev/null
POLICY='path "transit/keys/*" { capabilities = ["read"] }
path "transit/sign/*" { capabilities = ["update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }'
bao PUT sys/policies/acl/bench "$(python3 -c 'import json, sys; print(json.dumps({"policy": sys.argv[1]}))' "$POLICY")" >/dev/null
bao POST auth/token/create '{"policies":["bench"],"ttl":"2h"}' \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["auth"]["client_token"])' >"$WORK/token"

# --- the sidecar ----------------------------------------------------------------
SOCK=$WORK/kms.sock
cat >"$WORK/config.yaml" <<EOF
listen: { socket: $SOCK }
backends:
  vault: { type: vault, address: "$ADDR", auth: { method: token, token_file: "$WORK/token" } }
keys:
  sign: { backend: vault, key: bench-p256, ops: ["*"] }
  data: { backend: vault, key: bench-aes, ops: ["*"] }
callers:
  - { uids: [$(id -u)], keys: ["*"], ops: ["*"] }
log: { level: warn }
EOF
"$BIN" serve --config "$WORK/config.yaml" >"$WORK/sidecar.log" 2>&1 &
PID=$!
wait_for_socket "$SOCK" "$WORK/sidecar.log"

# --- bodies ---------------------------------------------------------------------
python3 - "$WORK" "$ITEMS" <<'PY'
import base64, json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
b64 = lambda b: base64.b64encode(b).decode()
sign = {"message": b64(os.urandom(32))}
enc = {"plaintext": b64(os.urandom(1024)), "context": {"tenant": "bench"}}
for name, body in [("sign", sign), ("encrypt", enc),
                   ("sign-batch", {"items": [sign] * n}), ("encrypt-batch", {"items": [enc] * n})]:
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(body, f)
PY
# Every answer of a batch must be an item's success.
for b in sign-batch encrypt-batch; do
    post --unix-socket "$SOCK" --data-binary @"$WORK/$b.json" "http://localhost/v1/keys/${b%%-*}/$b" \
        | python3 -c 'import json, sys
v = json.load(sys.stdin)
items = v.get("results") or v.get("signatures")
bad = [i for i in items if isinstance(i, dict) and "error" in i]
sys.exit(f"failed items: {bad[:3]}" if bad or len(items) != int(sys.argv[1]) else 0)' "$ITEMS" \
        || die "$b answered failures"
done
# sign-batch and encrypt-batch take their alias's path: /v1/keys/sign/…, /v1/keys/data/…
alias_of() { [[ $1 == sign* ]] && echo sign || echo data; }

# mean_ms OP REQUESTS: oha's mean latency of REQUESTS calls, one at a time.
mean_ms() {
    local op=$1 n=$2 out
    out=$(oha "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" -n "$n" -c 1 -m POST -H 'content-type: application/json' \
        -D "$WORK/$op.json" --unix-socket "$SOCK" "http://localhost/v1/keys/$(alias_of "$op")/$op")
    python3 -c 'import json, sys
v = json.loads(sys.argv[1])
codes = v.get("statusCodeDistribution", {})
if set(codes) != {"200"}:
    sys.exit(f"non-200 answers: {codes}")
print(f"{v[\"summary\"][\"average\"] * 1000:.3f}")' "$out" || die "$op: non-200 answers"
}

log "warming up"
mean_ms sign 50 >/dev/null
mean_ms sign-batch 5 >/dev/null
declare -A MS
for op in sign sign-batch encrypt encrypt-batch; do
    n=$SINGLES
    [[ $op == *-batch ]] && n=$BATCHES
    log "$op: $n requests, one at a time"
    MS[$op]=$(mean_ms "$op" "$n")
done

REPORT=$(python3 - "$ITEMS" "${MS[sign]}" "${MS[sign-batch]}" "${MS[encrypt]}" "${MS[encrypt-batch]}" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$("$BAO" version | head -1)" "$(nproc)" <<'PY'
import sys, datetime
n, s1, sb, e1, eb, commit, bao, cores = sys.argv[1:]
n = int(n)
rows = [("sign P-256", float(s1), float(sb)), ("encrypt 1 KiB", float(e1), float(eb))]
print(f"### {datetime.date.today()} · commit {commit} · {bao} · {cores} cores\n")
print("`make bench-batch`\n")
print(f"| operation | one call (ms) | {n} calls one by one (ms) | one {n}-item batch (ms) | speed-up | target ≥ 4× |")
print("|---|---:|---:|---:|---:|---|")
for name, one, batch in rows:
    seq = one * n
    print(f"| {name} | {one:.3f} | {seq:.1f} | {batch:.1f} | {seq / batch:.1f}× | {'✔' if seq / batch >= 4 else '✘'} |")
PY
)
echo "$REPORT"
if [[ $APPEND != 0 ]]; then
    # Under "## bench-batch runs", which stands before "## bench-compare runs"
    # (that script appends at the end of the file).
    python3 - docs/benchmarks.md "$REPORT" <<'PY'
import sys
path, report = sys.argv[1], sys.argv[2]
text = open(path).read()
head = "## bench-batch runs\n\nAppended by `make bench-batch` ([benches/batch.sh](../benches/batch.sh)).\n"
if "## bench-batch runs" not in text:
    if "## bench-compare runs" in text:
        text = text.replace("## bench-compare runs", head + "\n## bench-compare runs", 1)
    else:
        text += "\n" + head
at = text.find("## bench-compare runs", text.index("## bench-batch runs"))
text = text[:at] + report + "\n\n" + text[at:] if at >= 0 else text + "\n" + report + "\n"
open(path, "w").write(text)
PY
    log "appended to docs/benchmarks.md"
fi

#!/usr/bin/env bash
# Instructions per request on the hot paths, counted by valgrind's callgrind
# (repeatable on a noisy shared machine, unlike time): the release sidecar
# (embedded default config, local keys), the transport ceiling
# (benches/ceiling.rs), and on the proxied path a sign through the sidecar's
# vault backend and the same transit sign through a thin proxy (the
# ceiling's --upstream mode) in front of an OpenBao dev server, run under
# callgrind with collection off; for each
# route, INSTR_WARMUP requests warm caches and connections, then collection
# is switched on for exactly INSTR_REQUESTS requests on one connection (oha
# -n -c 1) and the dump's total, all threads, is divided by the count.
#
#   benches/instructions.sh            # table on stdout
#   INSTR_KEEP=DIR benches/instructions.sh   # also keep the callgrind dumps
#                                            # (callgrind_annotate DIR/<route>.out)
#
# Tunables: INSTR_REQUESTS (default 2000), INSTR_WARMUP (default 300),
# BENCH_BIN_DIR (take kms-sidecar and transport-ceiling from there, build
# nothing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN_DIR=${BENCH_BIN_DIR:-}
BIN=${BIN_DIR:-$ROOT/target/release}/kms-sidecar
CEILING=${BIN_DIR:-$ROOT/target/release/examples}/transport-ceiling
REQUESTS=${INSTR_REQUESTS:-2000}
WARMUP=${INSTR_WARMUP:-300}

BENCH_TAG=instructions
# shellcheck source=benches/common.sh
source benches/common.sh
require valgrind callgrind_control curl python3
find_bao
if [[ -z $BIN_DIR ]]; then
    build_and_find_oha
    # Its own command: an example brings the dev-dependencies' features in,
    # and the sidecar measured is the one `cargo build --release` ships.
    cargo build --release --example transport-ceiling
else
    BUILD=false build_and_find_oha
fi
work_dir instructions
KEEP=${INSTR_KEEP:-}
[[ -n $KEEP ]] && mkdir -p "$KEEP"

# under_callgrind NAME CMD…: starts CMD under callgrind (instrumentation off until measured) in
# $WORK, its pid in $PID.
under_callgrind() {
    local name=$1
    shift
    (cd "$WORK" && exec valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$WORK/$name.%p.out" "$@") >>"$WORK/$name.log" 2>&1 &
    PID=$!
}

# count NAME SOCKET PATH BODYFILE -> instructions per request
count() {
    local name=$1 sock=$2 path=$3 body=$4 out
    local common=(--unix-socket "$sock" -c 1 -m POST -H 'content-type: application/json' "${OHA_HEADERS[@]}" -D "$body" "${OHA_EXTRA[@]}" "${OHA_JSON[@]}")
    oha "${common[@]}" -n "$WARMUP" "http://localhost$path" >"$WORK/$name.warm.json"
    callgrind_control --instr=on "$PID" >/dev/null 2>&1
    callgrind_control --zero "$PID" >/dev/null 2>&1
    oha "${common[@]}" -n "$REQUESTS" "http://localhost$path" >"$WORK/$name.json"
    callgrind_control --dump="$name" "$PID" >/dev/null 2>&1
    callgrind_control --instr=off "$PID" >/dev/null 2>&1
    python3 - "$WORK/$name.json" "$REQUESTS" <<'PY' || die "$name: not every request answered 200"
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution") or {}
sys.exit(0 if codes.get("200") == int(sys.argv[2]) and not r.get("errorDistribution") else 1)
PY
    # This route's dump: each is removed once read, so it is the only one.
    local dumps=("$WORK"/*.out.*)
    out=${dumps[0]}
    [[ -f $out ]] || die "$name: no callgrind dump"
    [[ -n $KEEP ]] && cp "$out" "$KEEP/$name.out"
    awk -v n="$REQUESTS" '$1 == "summary:" || $1 == "totals:" { ir = $2 } END { printf "%.0f\n", ir / n }' "$out"
    rm -f "$out"
}

stop() {
    stop_pid "$PID" "the server under callgrind"
    PID=""
}

OHA_HEADERS=()

# --- bodies -----------------------------------------------------------------
PT_B64=$(head -c 1024 /dev/urandom | base64 -w0)
MSG_B64=$(head -c 32 /dev/urandom | base64 -w0)
printf '{"plaintext":"%s","context":{"tenant":"bench"}}' "$PT_B64" >"$WORK/env-enc.body"
printf '{"message":"%s"}' "$MSG_B64" >"$WORK/sign.body"
printf '{"plaintext":"%s"}' "$PT_B64" >"$WORK/enc.body"

# --- the sidecar --------------------------------------------------------------
log "first start (generates the local keys)"
(cd "$WORK" && exec "$BIN" serve) >>"$WORK/sidecar.log" 2>&1 &
PID=$!
wait_for_socket "$WORK/kms-sidecar.sock" "$WORK/sidecar.log"
curl -sf --unix-socket "$WORK/kms-sidecar.sock" -H 'content-type: application/json' \
    --data-binary @"$WORK/env-enc.body" http://localhost/v1/keys/aes-256/envelope/encrypt \
    | python3 -c 'import json,sys; print(json.dumps({"envelope": json.load(sys.stdin)["envelope"], "context": {"tenant": "bench"}}))' \
    >"$WORK/env-dec.body"
stop

log "the sidecar under callgrind (with the transit-compatible API on)"
KMS_SIDECAR_COMPAT__VAULT_TRANSIT__ENABLED=true under_callgrind sidecar "$BIN" serve
wait_until_200 "$PID" sidecar "$WORK/sidecar.log" 120 --unix-socket "$WORK/kms-sidecar.sock" http://localhost/readyz
declare -A IR
for route in env-enc:/v1/keys/aes-256/envelope/encrypt:env-enc.body \
    env-dec:/v1/keys/aes-256/envelope/decrypt:env-dec.body \
    sign:/v1/keys/ecdsa-p256/sign:sign.body \
    encrypt:/v1/keys/aes-256/encrypt:enc.body \
    transit-encrypt:/v1/transit/encrypt/aes-256:enc.body; do
    IFS=: read -r name path body <<<"$route"
    IR[$name]=$(count "$name" "$WORK/kms-sidecar.sock" "$path" "$WORK/$body")
    log "$name: ${IR[$name]} instructions per request"
done
stop

log "the transport ceiling under callgrind"
under_callgrind ceiling "$CEILING" --socket "$WORK/ceiling.sock"
wait_until_200 "$PID" ceiling "$WORK/ceiling.log" 120 --unix-socket "$WORK/ceiling.sock" http://localhost/
IR[ceiling]=$(count ceiling "$WORK/ceiling.sock" / "$WORK/env-enc.body")
log "ceiling: ${IR[ceiling]} instructions per request"
stop

# --- the proxied path: OpenBao, then a sign through the sidecar and a proxy ----
log "OpenBao dev server, transit key p256"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/bao"
(cd "$WORK/bao" && exec env -u VAULT_ADDR -u BAO_ADDR HOME="$WORK/bao" "$BAO" server -dev \
    -dev-root-token-id=root -dev-listen-address="127.0.0.1:$PORT") >>"$WORK/bao.log" 2>&1 &
BAO_PID=$!
trap 'rc=$?; kill "$BAO_PID" 2>/dev/null; (exit $rc); _work_dir_cleanup' EXIT
wait_until_200 "$BAO_PID" OpenBao "$WORK/bao.log" 30 "http://127.0.0.1:$PORT/v1/sys/health"
curl -sf -H 'X-Vault-Token: root' -d '{"type":"transit"}' "http://127.0.0.1:$PORT/v1/sys/mounts/transit"
curl -sf -H 'X-Vault-Token: root' -d '{"type":"ecdsa-p256"}' "http://127.0.0.1:$PORT/v1/transit/keys/p256" >/dev/null
echo root >"$WORK/vault.token"
cat >"$WORK/vault.yaml" <<YAML
listen: { socket: $WORK/vault.sock }
backends:
  openbao: { type: vault, address: "http://127.0.0.1:$PORT", auth: { method: token, token_file: $WORK/vault.token } }
keys:
  p256: { backend: openbao, key: p256, ops: [sign] }
callers:
  - { uids: [$(id -u)], keys: ["*"], ops: [sign] }
YAML
printf '{"input":"%s"}' "$MSG_B64" >"$WORK/transit-sign.body"

log "the vault-backed sidecar under callgrind"
under_callgrind vault-sidecar "$BIN" serve --config "$WORK/vault.yaml"
wait_until_200 "$PID" "vault-backed sidecar" "$WORK/vault-sidecar.log" 120 --unix-socket "$WORK/vault.sock" http://localhost/readyz
IR[vault-sign]=$(count vault-sign "$WORK/vault.sock" /v1/keys/p256/sign "$WORK/sign.body")
log "vault-sign: ${IR[vault-sign]} instructions per request"
stop

log "the thin proxy under callgrind"
under_callgrind proxy "$CEILING" --socket "$WORK/proxy.sock" --upstream "http://127.0.0.1:$PORT"
wait_until_200 "$PID" "thin proxy" "$WORK/proxy.log" 120 --unix-socket "$WORK/proxy.sock" http://localhost/v1/sys/health
OHA_HEADERS=(-H 'X-Vault-Token: root')
IR[proxy-sign]=$(count proxy-sign "$WORK/proxy.sock" /v1/transit/sign/p256 "$WORK/transit-sign.body")
OHA_HEADERS=()
log "proxy-sign: ${IR[proxy-sign]} instructions per request"
stop

c=${IR[ceiling]}
echo "| Route | Instructions per request | × ceiling |"
echo "|---|---:|---:|"
for name in env-enc env-dec sign encrypt transit-encrypt ceiling vault-sign proxy-sign; do
    case $name in
        env-enc) label="Envelope encrypt 1 KiB" ;;
        env-dec) label="Envelope decrypt 1 KiB" ;;
        sign) label="Sign P-256 (32-byte message)" ;;
        encrypt) label="Direct AES-256-GCM encrypt 1 KiB" ;;
        transit-encrypt) label="The same encrypt through the Vault-transit-compatible API" ;;
        ceiling) label="Transport ceiling (hyper, fixed answer)" ;;
        vault-sign) label="Sign P-256 through the vault backend (OpenBao transit)" ;;
        proxy-sign) label="Transit sign P-256 through the thin proxy (hyper client)" ;;
    esac
    awk -v l="$label" -v ir="${IR[$name]}" -v c="$c" 'BEGIN { printf "| %s | %\047d | %.2f |\n", l, ir, ir / c }'
done

#!/usr/bin/env bash
# A 64-item batch against 64 single calls, through the sidecar's vault
# backend to an OpenBao dev server on this machine (transit, a token of the
# policy of docs/vault.md, as benches/common.sh sets it up): sign P-256 (`sign-batch` vs `sign`) and direct encrypt
# 1 KiB (`encrypt-batch` vs `encrypt`). One connection, one request at a
# time, as an app calling in a loop would: the single calls' mean latency
# × 64 against the batch's mean latency. Items run
# `limits.batch_concurrency` (8, the default) at a time.
#
# Each measurement is made with OpenBao on the loopback, and again behind
# benches/delay_proxy.py, which holds every chunk 1 ms in each direction:
# a Vault one network hop away, as in a cluster. (On the loopback of a
# 2-core machine, OpenBao's own CPU bounds what concurrency can gain.)
#
# The report (markdown) goes to stdout and is added to docs/benchmarks.md
# under "## bench-batch runs" (BENCH_BATCH_APPEND=0: only printed). Any
# non-200 answer or failed item fails the script.
#
# Tunables: BENCH_BATCH_REQUESTS (single calls measured, default 640; batches:
# a tenth), BENCH_BATCH_DELAYS (ms added each way, default "0 1"),
# BENCH_BIN_DIR (use DIR/kms-sidecar, build nothing), BAO_BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BENCH_TAG=bench-batch
# shellcheck source=benches/common.sh
source benches/common.sh
require curl python3

SINGLES=${BENCH_BATCH_REQUESTS:-640}
BATCHES=$((SINGLES / 10))
ITEMS=64
APPEND=${BENCH_BATCH_APPEND:-1}
read -r -a DELAYS <<<"${BENCH_BATCH_DELAYS:-0 1}"
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$BENCH_BIN_DIR/kms-sidecar
    BUILD=false build_and_find_oha
else
    build_and_find_oha
    BIN=$PWD/target/release/kms-sidecar
fi
find_bao
work_dir batch
BAO_PID="" PROXY_PID=""
trap 'rc=$?; stop_pid "$PROXY_PID" proxy; stop_pid "$BAO_PID" bao; (exit $rc); _work_dir_cleanup' EXIT

post() { curl -sS --fail-with-body --max-time 10 -H 'content-type: application/json' "$@"; }

# --- OpenBao: transit, the bench policy, a token ----------------------------------
PORT=$(free_port)
ADDR=http://127.0.0.1:$PORT
ROOT=root-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BAO" server -dev -dev-root-token-id="$ROOT" -dev-listen-address="127.0.0.1:$PORT" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
wait_until_200 "$BAO_PID" bao "$WORK/bao.log" 60 "$ADDR/v1/sys/health"
bao_bench_transit "$ADDR" "$ROOT"
bao_bench_token "$ADDR" "$ROOT" "$WORK/token"

# --- request bodies ---------------------------------------------------------------
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

# --- the sidecar, in front of OpenBao at URL ----------------------------------------
SOCK=$WORK/kms.sock
start_sidecar() { # start_sidecar URL
    {
        echo "listen: { socket: $SOCK }"
        echo "backends:"
        echo "  vault: { type: vault, address: \"$1\", auth: { method: token, token_file: \"$WORK/token\" } }"
        echo "keys:"
        echo "  sign: { backend: vault, key: bench-p256, ops: [\"*\"] }"
        echo "  data: { backend: vault, key: bench-aes, ops: [\"*\"] }"
        echo "callers:"
        echo "  - { uids: [$(id -u)], keys: [\"*\"], ops: [\"*\"] }"
        echo "log: { level: warn }"
    } >"$WORK/config.yaml"
    "$BIN" serve --config "$WORK/config.yaml" >"$WORK/sidecar.log" 2>&1 &
    PID=$!
    wait_for_socket "$SOCK" "$WORK/sidecar.log"
}

# The alias of an operation: sign* on `sign`, the rest on `data`.
alias_of() { if [[ $1 == sign* ]]; then echo sign; else echo data; fi; }

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
print("%.3f" % (v["summary"]["average"] * 1000))' "$out" || die "$op: non-200 answers"
}

# check_batch OP: every item of one batch answer succeeded.
check_batch() {
    post --unix-socket "$SOCK" --data-binary @"$WORK/$1.json" "http://localhost/v1/keys/$(alias_of "$1")/$1" \
        | python3 -c 'import json, sys
v = json.load(sys.stdin)
items = v.get("items") or v.get("signatures") or []
bad = [i for i in items if isinstance(i, dict) and "error" in i]
sys.exit(f"failed items: {bad[:3]}" if bad or len(items) != int(sys.argv[1]) else 0)' "$ITEMS" \
        || die "$1 answered failures"
}

ROWS=()
for delay in "${DELAYS[@]}"; do
    target=$ADDR
    if [[ $delay != 0 ]]; then
        proxy_port=$(free_port)
        python3 benches/delay_proxy.py --listen "$proxy_port" --upstream "127.0.0.1:$PORT" --delay-ms "$delay" \
            >"$WORK/proxy.log" 2>&1 &
        PROXY_PID=$!
        target=http://127.0.0.1:$proxy_port
        wait_until_200 "$PROXY_PID" "delay proxy" "$WORK/proxy.log" 30 "$target/v1/sys/health"
    fi
    log "OpenBao at $target (${delay} ms added each way)"
    start_sidecar "$target"
    check_batch sign-batch
    check_batch encrypt-batch
    mean_ms sign 50 >/dev/null # warm-up
    mean_ms sign-batch 5 >/dev/null
    declare -A MS=()
    for op in sign sign-batch encrypt encrypt-batch; do
        n=$SINGLES
        [[ $op == *-batch ]] && n=$BATCHES
        log "$op: $n requests, one at a time"
        MS[$op]=$(mean_ms "$op" "$n")
    done
    ROWS+=("$delay sign ${MS[sign]} ${MS[sign-batch]}" "$delay encrypt ${MS[encrypt]} ${MS[encrypt-batch]}")
    stop_pid "$PID" sidecar
    PID=""
    stop_pid "$PROXY_PID" proxy
    PROXY_PID=""
done

REPORT=$(python3 - "$ITEMS" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$("$BAO" version | head -1)" \
    "$(nproc)" "${ROWS[@]}" <<'PY'
import sys, datetime
n, commit, bao, cores, *rows = sys.argv[1:]
n = int(n)
names = {"sign": "sign P-256", "encrypt": "encrypt 1 KiB"}
print(f"### {datetime.date.today()} · commit {commit} · {bao} · {cores} cores\n")
print("`make bench-batch`\n")
print(f"| OpenBao | operation | one call (ms) | {n} calls one by one (ms) | one {n}-item batch (ms) | speed-up | target ≥ 4× |")
print("|---|---|---:|---:|---:|---:|---|")
for row in rows:
    delay, op, one, batch = row.split()
    one, batch = float(one), float(batch)
    where = "loopback" if delay == "0" else f"+{delay} ms each way"
    seq = one * n
    print(f"| {where} | {names[op]} | {one:.3f} | {seq:.1f} | {batch:.1f} | {seq / batch:.1f}× | {'✔' if seq / batch >= 4 else '✘'} |")
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
head = "## bench-batch runs\n\nAdded by `make bench-batch` ([benches/batch.sh](../benches/batch.sh)).\n"
if "## bench-batch runs" not in text:
    if "\n## bench-compare runs" in text:
        text = text.replace("\n## bench-compare runs", "\n" + head + "\n## bench-compare runs", 1)
    else:
        text += "\n" + head
start = text.index("## bench-batch runs")
at = text.find("\n## bench-compare runs", start)
text = text[:at] + "\n" + report + "\n" + text[at:] if at >= 0 else text + "\n" + report + "\n"
open(path, "w").write(text)
PY
    log "added to docs/benchmarks.md"
fi

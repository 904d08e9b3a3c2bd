#!/usr/bin/env bash
# Memory after bursts of large bodies (make bench-burst): the release sidecar
# with its embedded default, two bursts of 100 concurrent 1 MiB JSON
# envelope encrypts (oha), VmRSS idle, at the peak (VmHWM), right after, and
# 30 s after the bursts. The binary sets glibc's mmap and trim thresholds at
# start (src/main.rs); MALLOC_ARENA_MAX=2 on top is measured too. Prints a
# Markdown table for docs/benchmarks.md.
#
#   BURSTS=2 BURST_CONNS=100 SETTLE=30 ./benches/burst.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_TAG=burst
source benches/common.sh
require curl python3

BURSTS=${BURSTS:-2}
BURST_CONNS=${BURST_CONNS:-100}
SETTLE=${SETTLE:-30}
BIN=target/release/kms-sidecar

build_and_find_oha

work_dir burst
SOCK=$WORK/kms-sidecar.sock

# A body just under limits.max_body (1 MiB): 760 KiB of plaintext in base64.
python3 -c 'import base64, os, json; print(json.dumps({"plaintext": base64.b64encode(os.urandom(760 * 1024)).decode()}))' >"$WORK/body.json"
log "body: $(stat -c %s "$WORK/body.json") bytes"

kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PID/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

ROWS=()
# Each variant: a label and the environment it runs with.
for variant in "as shipped|" "MALLOC_ARENA_MAX=2|MALLOC_ARENA_MAX=2"; do
    label=${variant%%|*}
    env_setting=${variant#*|}
    rm -f "$SOCK"
    (cd "$WORK" && exec env $env_setting "$OLDPWD/$BIN" serve) >>"$WORK/sidecar.log" 2>&1 &
    PID=$!
    wait_for_socket "$SOCK" "$WORK/sidecar.log"
    curl -sf --unix-socket "$SOCK" -H 'Content-Type: application/json' -d @"$WORK/body.json" \
        http://localhost/v1/keys/aes-256/envelope/encrypt >/dev/null
    sleep 2
    idle=$(kib VmRSS)
    codes=""
    for burst in $(seq 1 "$BURSTS"); do
        out=$(oha --unix-socket "$SOCK" -n "$BURST_CONNS" -c "$BURST_CONNS" -m POST \
            -H 'content-type: application/json' -D "$WORK/body.json" "${OHA_EXTRA[@]}" "${OHA_JSON[@]}" \
            http://localhost/v1/keys/aes-256/envelope/encrypt)
        codes+=$(python3 -c 'import json, sys; d = json.load(sys.stdin); print(" ".join(f"{k}×{v}" for k, v in sorted(d["statusCodeDistribution"].items())))' <<<"$out")" "
    done
    after=$(kib VmRSS)
    hwm=$(kib VmHWM)
    sleep "$SETTLE"
    settled=$(kib VmRSS)
    log "$label: idle $(mib "$idle") MiB, peak $(mib "$hwm"), after $(mib "$after"), ${SETTLE} s later $(mib "$settled"); answers: $codes"
    ROWS+=("| $label | $(mib "$idle") | $(mib "$hwm") | $(mib "$after") | $(mib "$settled") | ${codes% } |")
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
done

echo
echo "$BURSTS bursts of $BURST_CONNS concurrent 1 MiB envelope encrypts; VmRSS in MiB"
echo
echo "| malloc | idle | peak (VmHWM) | right after | ${SETTLE} s after | answers (status × count) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"

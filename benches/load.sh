#!/usr/bin/env bash
# Load test of the release build over its Unix socket: 1000 connections held
# for LOAD_DURATION seconds (default 60), 500 signing with ECDSA P-256 and 500
# sealing 1 KiB JSON envelopes with AES-256, at the same time (two oha runs).
# Checks there is no error and no fd or memory growth: VmRSS and open fds
# before, peak during (sampled every second) and after 5 s idle, for
# LOAD_ROUNDS rounds (default 2) on the same sidecar. The allocator keeps
# memory it has used, so the first round sets the plateau: exits 1 on any
# failed request, if fds after a round exceed fds before by more than 5, or if
# VmRSS after the last round exceeds VmRSS after the first by more than 10 %.
#
# Tunables (environment): LOAD_DURATION (s per round, default 60),
# LOAD_CONNECTIONS (per traffic type, default 500), LOAD_ROUNDS (default 2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/target/release/kms-sidecar
DURATION=${LOAD_DURATION:-60}
CONNS=${LOAD_CONNECTIONS:-500}
ROUNDS=${LOAD_ROUNDS:-2}

BENCH_TAG=load
# shellcheck source=benches/common.sh
source benches/common.sh
require curl python3
build_and_find_oha

# 1000 client sockets plus the sidecar's: make room in this shell's limit
# (oha inherits it; the sidecar raises its own to the hard limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 2 * CONNS + 256)) || die "open-file limit $(ulimit -n) is too low for $((2 * CONNS)) connections"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kms-sidecar-load.XXXXXX")
SOCK=$WORK/kms-sidecar.sock
PID="" SAMPLER=""
cleanup() {
    local rc=$?
    [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One uid (oha) stands in for many app containers: its connection cap
# (limits.max_connections_per_caller, 256 by default) is raised.
(cd "$WORK" && KMS_SIDECAR_LIMITS__MAX_CONNECTIONS_PER_CALLER=$((4 * CONNS)) exec "$BIN" serve) >>"$WORK/sidecar.log" 2>&1 &
PID=$!
wait_for_socket "$SOCK" "$WORK/sidecar.log"

rss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$PID/status"; }
hwm() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$PID/status"; }
fds() { ls "/proc/$PID/fd" | wc -l; }

# Warm up both paths (keys loaded, data key cached), then measure from idle.
for _ in 1 2 3; do
    curl -sf --unix-socket "$SOCK" -H 'Content-Type: application/json' -d '{"message":"aGVsbG8="}' http://localhost/v1/keys/ecdsa-p256/sign >/dev/null
done
PLAIN=$(head -c 1024 /dev/urandom | base64 -w0)
ENVELOPE_BODY="{\"plaintext\":\"$PLAIN\"}"
curl -sf --unix-socket "$SOCK" -H 'Content-Type: application/json' -d "$ENVELOPE_BODY" http://localhost/v1/keys/aes-256/envelope/encrypt >/dev/null
sleep 2
RSS_BEFORE=$(rss) FDS_BEFORE=$(fds)
log "before: VmRSS $RSS_BEFORE KiB, $FDS_BEFORE fds; $((2 * CONNS)) connections for ${DURATION}s"

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    (
        while [[ -r /proc/$PID/status ]]; do
            echo "$(rss) $(fds)"
            sleep 1
        done >"$WORK/samples.$round"
    ) &
    SAMPLER=$!
    oha -z "${DURATION}s" -c "$CONNS" "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" --unix-socket "$SOCK" \
        -m POST -H 'Content-Type: application/json' -d '{"message":"aGVsbG8="}' \
        http://localhost/v1/keys/ecdsa-p256/sign >"$WORK/sign.$round.json" &
    SIGN=$!
    oha -z "${DURATION}s" -c "$CONNS" "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" --unix-socket "$SOCK" \
        -m POST -H 'Content-Type: application/json' -d "$ENVELOPE_BODY" \
        http://localhost/v1/keys/aes-256/envelope/encrypt >"$WORK/envelope.$round.json" &
    ENVELOPE=$!
    wait "$SIGN" "$ENVELOPE"
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
    sleep 5
    echo "$(rss) $(fds)" >"$WORK/after.$round"
done
HWM=$(hwm)
METRICS=$(curl -s --unix-socket "$SOCK" http://localhost/metrics)
REJECTED=$(awk '/^kms_sidecar_connections_rejected_total/ { print $2 }' <<<"$METRICS")
NOT_OK=$(awk '/^kms_sidecar_requests_total/ && !/code="ok"/ { n += $2 } END { print n + 0 }' <<<"$METRICS")

python3 - "$WORK" "$ROUNDS" "$RSS_BEFORE" "$FDS_BEFORE" "$HWM" "$REJECTED" "$NOT_OK" <<'EOF'
import json, sys
work, rounds, rss_before, fds_before, hwm, rejected, not_ok = sys.argv[1:]
rounds, rss_before, fds_before = int(rounds), int(rss_before), int(fds_before)
failed, afters = 0, []
for n in range(1, rounds + 1):
    samples = [tuple(map(int, l.split())) for l in open(f"{work}/samples.{n}") if len(l.split()) == 2]
    rss_after, fds_after = map(int, open(f"{work}/after.{n}").read().split())
    afters.append((rss_after, fds_after))
    for name in ("sign", "envelope"):
        r = json.load(open(f"{work}/{name}.{n}.json"))
        s = r["summary"]
        codes = r.get("statusCodeDistribution", {})
        errors = r.get("errorDistribution", {})
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        total = sum(codes.values()) + sum(errors.values())
        failed += total - ok
        p = r.get("latencyPercentiles", {})
        print(f"round {n} {name:9} requests {total:>8}  {s['requestsPerSec']:>7.0f} req/s  success {s['successRate']*100:.2f}%"
              f"  failed {total - ok}  p50 {p.get('p50', 0)*1000:.1f} ms  p99 {p.get('p99', 0)*1000:.1f} ms  errors {errors}")
    print(f"round {n} VmRSS KiB before {rss_before}  peak {max((x[0] for x in samples), default=0)}  after {rss_after};"
          f"  fds before {fds_before}  peak {max((x[1] for x in samples), default=0)}  after {fds_after}")
print(f"VmHWM {hwm} KiB; connections_rejected_total {rejected}; non-ok requests_total {not_ok}")
if failed or int(float(not_ok)) or int(float(rejected or 0)):
    sys.exit("FAIL: some requests failed")
if any(fds > fds_before + 5 for _, fds in afters):
    sys.exit("FAIL: open fds grew")
if afters[-1][0] > afters[0][0] * 1.10:
    sys.exit(f"FAIL: VmRSS grew from {afters[0][0]} to {afters[-1][0]} KiB between the first and the last round")
print("ok: no error, no fd growth, no memory growth after the first round")
EOF

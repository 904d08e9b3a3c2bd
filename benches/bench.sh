#!/usr/bin/env bash
# Benchmarks the release build of kms-sidecar over its Unix socket:
#   - throughput and latency of ECDSA P-256 sign and AES-256-GCM encrypt (oha),
#   - idle RSS and RSS under load (VmRSS sampled, VmHWM),
#   - cold start: exec to the first 200 on /healthz (and /readyz), keys already
#     generated,
#   - envelope encryption (JSON API, key alias aes-256): encrypt and decrypt of
#     1 KiB and 64 KiB plaintexts (oha, same conventions as above), and 1 KiB
#     encrypt on one connection,
#   - data-key cache: KMS data-key calls and cache hits over exactly 1,000,000
#     JSON envelope encrypts with one context (oha -n),
#   - streaming envelope encryption: 1 GiB through curl (-X POST -T) with
#     `Content-Type: application/octet-stream`, encrypt then decrypt (MiB/s,
#     output checked with cmp), the sidecar's VmRSS sampled every 100 ms.
# The sidecar runs with the embedded default config in a fresh temp dir, so
# its keys and socket live there. All traffic stays on the Unix socket.
#
# Tunables (environment): BENCH_DURATION (s, default 10), BENCH_CONNECTIONS
# (default 16), BENCH_WARMUP (s, default 2), BENCH_IDLE (s, default 3),
# BENCH_COLD_RUNS (default 10), BENCH_DATAKEY_REQUESTS (default 1000000),
# BENCH_DATAKEY_TIMEOUT (s, default 300), BENCH_STREAM_MIB (default 1024; 0
# skips the streaming runs), BENCH_STREAM_TIMEOUT (s per transfer, default 600).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/target/release/kms-sidecar

DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-16}
WARMUP=${BENCH_WARMUP:-2}
IDLE=${BENCH_IDLE:-3}
COLD_RUNS=${BENCH_COLD_RUNS:-10}
DATAKEY_REQUESTS=${BENCH_DATAKEY_REQUESTS:-1000000}
STREAM_MIB=${BENCH_STREAM_MIB:-1024}

BENCH_TAG=bench
# shellcheck source=benches/common.sh
source benches/common.sh
require curl python3 cmp df truncate
build_and_find_oha

# --- sidecar lifecycle -------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kms-sidecar-bench.XXXXXX")
SOCK=$WORK/kms-sidecar.sock
PID=""
SAMPLER=""

stop_sidecar() {
    stop_pid "$PID" sidecar
    PID=""
}

cleanup() {
    local rc=$?
    if [[ -n $SAMPLER ]]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
    stop_sidecar
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_sidecar() {
    (cd "$WORK" && exec "$BIN" serve) >>"$WORK/sidecar.log" 2>&1 &
    PID=$!
}

# Waits (at most $1 seconds) for /readyz to answer 200 over the socket.
wait_ready() {
    wait_until_200 "$PID" sidecar "$WORK/sidecar.log" "$1" --unix-socket "$SOCK" http://localhost/readyz
}

status_kib() { # status_kib FIELD -> value in KiB from /proc/$PID/status
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PID/status"
}

# start_sampler FILE SECONDS: VmRSS (KiB) of the sidecar every 100 ms into FILE,
# for at most SECONDS. stop_sampler ends it; peak_kib FILE prints the maximum.
start_sampler() {
    local file=$1 limit=$2
    (
        end=$((SECONDS + limit))
        while ((SECONDS < end)) && [[ -r /proc/$PID/status ]]; do
            awk '$1 == "VmRSS:" { print $2 }' "/proc/$PID/status" 2>/dev/null || true
            sleep 0.1
        done >"$file"
    ) &
    SAMPLER=$!
}
peak_kib() {
    local v
    v=$(sort -n "$1" | tail -n 1)
    echo "${v:-0}"
}

log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"

# --- 1. first start: generate the keys --------------------------------------
log "first start in $WORK (generates the local keys)"
start_sidecar
wait_ready 120
stop_sidecar

# --- 2. cold start, keys already present ------------------------------------
cat >"$WORK/coldstart.py" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time

binary, workdir, sock_path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def status(path):
    """Status code of GET path over the socket, or None if not answering yet."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(sock_path)
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = s.recv(64)
        parts = line.split(b" ", 2)
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
    except OSError:
        return None
    finally:
        s.close()

def first_200(path, t0, proc, deadline):
    while time.monotonic() < deadline:
        if status(path) == 200:
            return time.monotonic() - t0
        if proc.poll() is not None:
            sys.exit(f"sidecar exited with {proc.returncode} during start-up")
        time.sleep(0.001)
    sys.exit(f"no 200 on {path.decode()} within the deadline")

healthz, readyz = [], []
with open(os.path.join(workdir, "sidecar.log"), "ab") as log:
    for _ in range(runs):
        t0 = time.monotonic()
        proc = subprocess.Popen([binary, "serve"], cwd=workdir, stdout=log, stderr=log)
        try:
            deadline = t0 + 10.0
            healthz.append(first_200(b"/healthz", t0, proc, deadline))
            readyz.append(first_200(b"/readyz", t0, proc, deadline))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        time.sleep(0.1)

ms = lambda xs: [round(x * 1000, 2) for x in xs]
print(json.dumps({
    "healthz_median_ms": round(statistics.median(healthz) * 1000, 2),
    "healthz_min_ms": round(min(healthz) * 1000, 2),
    "healthz_max_ms": round(max(healthz) * 1000, 2),
    "readyz_median_ms": round(statistics.median(readyz) * 1000, 2),
    "healthz_all_ms": ms(healthz),
}))
PY
log "cold start: $COLD_RUNS runs, exec -> first 200 on /healthz"
COLD_JSON=$(python3 "$WORK/coldstart.py" "$BIN" "$WORK" "$SOCK" "$COLD_RUNS")
log "cold start: $COLD_JSON"

# --- 3. idle RSS -------------------------------------------------------------
log "starting the sidecar for the load runs"
start_sidecar
wait_ready 30
sleep "$IDLE"
IDLE_RSS_KIB=$(status_kib VmRSS)
log "idle VmRSS: ${IDLE_RSS_KIB} KiB after ${IDLE} s idle"

# --- 4. load runs, RSS sampled -----------------------------------------------
SAMPLES=$WORK/rss.samples
start_sampler "$SAMPLES" $(( (DURATION + WARMUP) * 3 + 30 ))

MSG_B64=$(head -c 32 /dev/urandom | base64 -w0)
PT_B64=$(head -c 1024 /dev/urandom | base64 -w0)

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of the sidecar, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$PID/stat"
}

# run_oha NAME CONNECTIONS PATH BODY -> writes $WORK/NAME.json and $WORK/NAME.cpu
# (the sidecar's CPU use during the measured run, in cores). A BODY starting
# with @ names a file holding the body (oha -D), for bodies too long for argv.
run_oha() {
    local name=$1 conns=$2 path=$3 body=$4 t0 t1 c0 c1 body_arg
    if [[ $body == @* ]]; then body_arg=(-D "${body#@}"); else body_arg=(-d "$body"); fi
    local common=(--unix-socket "$SOCK" -c "$conns" -m POST -H 'content-type: application/json' "${body_arg[@]}" "${OHA_EXTRA[@]}")
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) oha "${common[@]}" -z "${WARMUP}s" "${OHA_JSON[@]}" "http://localhost$path" >/dev/null
    fi
    log "$name: $conns connection(s), ${DURATION} s"
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    timeout $((DURATION + 60)) oha "${common[@]}" -z "${DURATION}s" "${OHA_JSON[@]}" "http://localhost$path" >"$WORK/$name.json"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.2f\n", c / hz / (t1 - t0) }' >"$WORK/$name.cpu"
}

run_oha sign "$CONNS" /v1/keys/ecdsa-p256/sign "{\"message\":\"$MSG_B64\"}"
run_oha encrypt "$CONNS" /v1/keys/aes-256/encrypt "{\"plaintext\":\"$PT_B64\"}"
# One connection, one request at a time: latency without queueing.
run_oha sign-c1 1 /v1/keys/ecdsa-p256/sign "{\"message\":\"$MSG_B64\"}"

stop_sampler
PEAK_RSS_KIB=$(peak_kib "$SAMPLES")
HWM_KIB=$(status_kib VmHWM)
AFTER_RSS_KIB=$(status_kib VmRSS)

# Sanity: one of each request answered 200 with the expected shape.
curl -sf --max-time 5 --unix-socket "$SOCK" -H 'content-type: application/json' \
    -d "{\"message\":\"$MSG_B64\"}" http://localhost/v1/keys/ecdsa-p256/sign | grep -q '"signature"' \
    || die "sign request did not return a signature"
curl -sf --max-time 5 --unix-socket "$SOCK" -H 'content-type: application/json' \
    -d "{\"plaintext\":\"$PT_B64\"}" http://localhost/v1/keys/aes-256/encrypt | grep -q '"ciphertext"' \
    || die "encrypt request did not return a ciphertext"

# --- 5. envelope encryption, JSON API (RSS sampled again) --------------------
ENV_PATH=/v1/keys/aes-256/envelope
CTX='{"tenant":"bench"}'
PT64K_B64=$(head -c 65536 /dev/urandom | base64 -w0)
printf '{"plaintext":"%s","context":%s}' "$PT_B64" "$CTX" >"$WORK/env-enc-1k.body"
printf '{"plaintext":"%s","context":%s}' "$PT64K_B64" "$CTX" >"$WORK/env-enc-64k.body"

# make_envelope SIZE: one envelope made with curl (replayed by the decrypt
# runs), checked to open to the same plaintext.
make_envelope() {
    local size=$1 out back
    out=$(curl -sf --max-time 10 --unix-socket "$SOCK" -H 'content-type: application/json' \
        --data-binary @"$WORK/env-enc-$size.body" "http://localhost$ENV_PATH/encrypt") \
        || die "envelope encrypt ($size) failed"
    python3 -c '
import json, sys
env = json.load(sys.stdin)["envelope"]
print(json.dumps({"envelope": env, "context": json.loads(sys.argv[1])}, separators=(",", ":")))
' "$CTX" <<<"$out" >"$WORK/env-dec-$size.body"
    back=$(curl -sf --max-time 10 --unix-socket "$SOCK" -H 'content-type: application/json' \
        --data-binary @"$WORK/env-dec-$size.body" "http://localhost$ENV_PATH/decrypt") \
        || die "envelope decrypt ($size) failed"
    python3 -c '
import json, sys
sent = json.load(open(sys.argv[1]))["plaintext"]
got = json.loads(sys.stdin.read())["plaintext"]
sys.exit(0 if sent == got else 1)
' "$WORK/env-enc-$size.body" <<<"$back" || die "envelope ($size) did not decrypt to its plaintext"
}
make_envelope 1k
make_envelope 64k

ENV_SAMPLES=$WORK/env-rss.samples
start_sampler "$ENV_SAMPLES" $(( (DURATION + WARMUP) * 5 + 60 ))
run_oha env-enc-1k "$CONNS" "$ENV_PATH/encrypt" "@$WORK/env-enc-1k.body"
run_oha env-enc-64k "$CONNS" "$ENV_PATH/encrypt" "@$WORK/env-enc-64k.body"
run_oha env-dec-1k "$CONNS" "$ENV_PATH/decrypt" "@$WORK/env-dec-1k.body"
run_oha env-dec-64k "$CONNS" "$ENV_PATH/decrypt" "@$WORK/env-dec-64k.body"
# One connection, one request at a time: latency without queueing.
run_oha env-enc-1k-c1 1 "$ENV_PATH/encrypt" "@$WORK/env-enc-1k.body"
stop_sampler
ENV_PEAK_RSS_KIB=$(peak_kib "$ENV_SAMPLES")

# --- 6. data-key cache over DATAKEY_REQUESTS envelope encrypts ---------------
# One context of its own, so the count starts from an empty cache entry; the
# figures are the metric deltas over the run. No warm-up: exactly N requests.
metric() { # metric NAME OP -> value of NAME{key="aes-256",op="OP"} (0 if absent)
    curl -sf --max-time 5 --unix-socket "$SOCK" http://localhost/metrics \
        | awk -v m="kms_sidecar_$1{key=\"aes-256\",op=\"$2\"}" '$1 == m { v = $2 } END { printf "%d\n", v + 0 }'
}
DK_CTX='{"tenant":"bench-datakey"}'
printf '{"plaintext":"%s","context":%s}' "$MSG_B64" "$DK_CTX" >"$WORK/env-datakey.body"
DK_LIMIT=${BENCH_DATAKEY_TIMEOUT:-300}
calls0=$(metric datakey_cache_backend_calls_total generate_data_key)
hits0=$(metric datakey_cache_hits_total encrypt)
miss0=$(metric datakey_cache_misses_total encrypt)
log "data-key cache: $DATAKEY_REQUESTS envelope encrypts, $CONNS connections (at most ${DK_LIMIT} s)"
c0=$(cpu_ticks)
t0=$(date +%s.%N)
DK_TIMED_OUT=false
if ! timeout "$DK_LIMIT" oha --unix-socket "$SOCK" -n "$DATAKEY_REQUESTS" -c "$CONNS" -m POST \
    -H 'content-type: application/json' -D "$WORK/env-datakey.body" "${OHA_EXTRA[@]}" "${OHA_JSON[@]}" \
    "http://localhost$ENV_PATH/encrypt" >"$WORK/env-datakey.json"; then
    log "data-key run did not finish within ${DK_LIMIT} s (or oha failed); figures cover the requests made"
    DK_TIMED_OUT=true
fi
t1=$(date +%s.%N)
c1=$(cpu_ticks)
calls1=$(metric datakey_cache_backend_calls_total generate_data_key)
hits1=$(metric datakey_cache_hits_total encrypt)
miss1=$(metric datakey_cache_misses_total encrypt)
DATAKEY_JSON=$(printf '{"requests":%d,"calls":%d,"hits":%d,"misses":%d,"seconds":%s,"cpu_ticks":%d,"clk_tck":%d,"timed_out":%s}' \
    "$DATAKEY_REQUESTS" $((calls1 - calls0)) $((hits1 - hits0)) $((miss1 - miss0)) \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" $((c1 - c0)) "$CLK_TCK" "$DK_TIMED_OUT")
log "data-key cache: $DATAKEY_JSON"

# --- 7. streaming envelope encryption of STREAM_MIB MiB ----------------------
# A fresh sidecar, so that its VmHWM covers the streaming runs only.
STREAM_JSON='{"skipped":"BENCH_STREAM_MIB=0"}'
STREAM_FAILED=false
if ((STREAM_MIB > 0)); then
    need_kib=$(( (STREAM_MIB * 3 + 64 + 512) * 1024 ))
    avail_kib=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    if ((avail_kib < need_kib)); then
        log "streaming skipped: $WORK has $((avail_kib / 1024)) MiB free, needs $((need_kib / 1024)) MiB (input, envelope, output)"
        STREAM_JSON="{\"skipped\":\"only $((avail_kib / 1024)) MiB free in the temp dir, $((need_kib / 1024)) MiB needed\"}"
    else
        stop_sidecar
        start_sidecar
        wait_ready 30
        sleep 1
        STREAM_IDLE_KIB=$(status_kib VmRSS)

        IN=$WORK/stream.in ENV_OUT=$WORK/stream.env DEC_OUT=$WORK/stream.dec
        log "streaming: writing $STREAM_MIB MiB of input (a 64 MiB random block repeated)"
        head -c $((64 << 20)) /dev/urandom >"$WORK/block"
        : >"$IN"
        for ((i = 0; i < (STREAM_MIB + 63) / 64; i++)); do cat "$WORK/block" >>"$IN"; done
        rm -f "$WORK/block"
        truncate -s $((STREAM_MIB << 20)) "$IN"
        STREAM_LIMIT=${BENCH_STREAM_TIMEOUT:-600}

        # stream OP INPUT OUTPUT -> "seconds uploaded downloaded curl_rc cpu_ticks peak_kib"
        # `-X POST -T FILE` streams the file from disk with a Content-Length
        # (`--data-binary @FILE` would load it whole, and curl 7.88 refuses 1 GiB
        # that way: "out of memory"); `Expect:` turns off 100-continue.
        stream() {
            local name=$1 input=$2 output=$3 res rc=0 c0 c1
            start_sampler "$WORK/$name-$(basename "$output").samples" "$STREAM_LIMIT"
            c0=$(cpu_ticks)
            res=$(curl -sS --fail --max-time "$STREAM_LIMIT" --unix-socket "$SOCK" \
                -H 'content-type: application/octet-stream' -H "x-encryption-context: $CTX" -H 'Expect:' \
                -X POST -T "$input" -o "$output" -w '%{time_total} %{size_upload} %{size_download}' \
                "http://localhost$ENV_PATH/$name") || rc=$?
            c1=$(cpu_ticks)
            stop_sampler
            echo "${res:-0 0 0} $rc $((c1 - c0)) $(peak_kib "$WORK/$name-$(basename "$output").samples")"
        }
        log "streaming: encrypt $STREAM_MIB MiB"
        read -r enc_s enc_up enc_down enc_rc enc_cpu enc_peak < <(stream encrypt "$IN" "$ENV_OUT")
        log "streaming: encrypt took $enc_s s (curl exit $enc_rc), envelope $enc_down bytes"
        log "streaming: decrypt the envelope"
        read -r dec_s dec_up dec_down dec_rc dec_cpu dec_peak < <(stream decrypt "$ENV_OUT" "$DEC_OUT")
        log "streaming: decrypt took $dec_s s (curl exit $dec_rc)"
        if cmp -s "$IN" "$DEC_OUT"; then SAME=true; else SAME=false; fi
        rm -f "$DEC_OUT"
        # The same two transfers with curl's output discarded: the client's
        # write of 1 GiB to the temp dir's file system is no longer timed.
        log "streaming: encrypt and decrypt again, output to /dev/null"
        read -r encn_s _ _ encn_rc encn_cpu encn_peak < <(stream encrypt "$IN" /dev/null)
        read -r decn_s _ _ decn_rc decn_cpu decn_peak < <(stream decrypt "$ENV_OUT" /dev/null)
        log "streaming: to /dev/null: encrypt $encn_s s (curl exit $encn_rc), decrypt $decn_s s (curl exit $decn_rc)"
        rm -f "$IN" "$ENV_OUT"
        [[ $SAME == true && $enc_rc == 0 && $dec_rc == 0 && $encn_rc == 0 && $decn_rc == 0 ]] || STREAM_FAILED=true
        $STREAM_FAILED && log "error: streaming round trip failed (curl exit $enc_rc / $dec_rc, output identical: $SAME)"
        STREAM_JSON=$(printf '{"mib":%d,"enc_s":%s,"enc_up":%s,"enc_down":%s,"enc_rc":%d,"enc_cpu":%d,"enc_peak":%d,"dec_s":%s,"dec_up":%s,"dec_down":%s,"dec_rc":%d,"dec_cpu":%d,"dec_peak":%d,"encn_s":%s,"encn_rc":%d,"encn_cpu":%d,"encn_peak":%d,"decn_s":%s,"decn_rc":%d,"decn_cpu":%d,"decn_peak":%d,"same":%s,"idle":%d,"hwm":%d,"clk_tck":%d}' \
            "$STREAM_MIB" "$enc_s" "$enc_up" "$enc_down" "$enc_rc" "$enc_cpu" "$enc_peak" \
            "$dec_s" "$dec_up" "$dec_down" "$dec_rc" "$dec_cpu" "$dec_peak" \
            "$encn_s" "$encn_rc" "$encn_cpu" "$encn_peak" "$decn_s" "$decn_rc" "$decn_cpu" "$decn_peak" "$SAME" \
            "$STREAM_IDLE_KIB" "$(status_kib VmHWM)" "$CLK_TCK")
        log "streaming: $STREAM_JSON"
    fi
fi

# --- 8. report ---------------------------------------------------------------
python3 - "$WORK" "$CONNS" "$DURATION" "$IDLE_RSS_KIB" "$PEAK_RSS_KIB" "$HWM_KIB" "$AFTER_RSS_KIB" "$COLD_JSON" "$COLD_RUNS" \
    "$ENV_PEAK_RSS_KIB" "$DATAKEY_JSON" "$STREAM_JSON" <<'PY'
import json, sys

work, conns, duration = sys.argv[1], sys.argv[2], sys.argv[3]
idle, peak, hwm, after = (int(x) for x in sys.argv[4:8])
cold, cold_runs = json.loads(sys.argv[8]), sys.argv[9]
env_peak, datakey, stream = int(sys.argv[10]), json.loads(sys.argv[11]), json.loads(sys.argv[12])

def load(name):
    with open(f"{work}/{name}.json") as f:
        r = json.load(f)
    s = r["summary"]
    pct = r.get("latencyPercentiles") or r.get("latency_percentiles") or {}
    codes = {int(k): v for k, v in (r.get("statusCodeDistribution") or {}).items()}
    errors = sum((r.get("errorDistribution") or {}).values()) + sum(v for k, v in codes.items() if not 200 <= k < 300)
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    with open(f"{work}/{name}.cpu") as f:
        cpu = float(f.read())
    return {
        "cpu": cpu,
        "rps": s["requestsPerSec"],
        "p50": pct["p50"] * 1e6,
        "p99": pct["p99"] * 1e6,
        "ok": ok,
        "errors": errors,
        "errdist": r.get("errorDistribution") or {},
        "codes": codes,
    }

mib = lambda kib: kib / 1024

def table(runs):
    rows = []
    for label, c, name in runs:
        m = load(name)
        rows.append(f"| {label} | {c} | {m['rps']:,.0f} | {m['p50']:.0f} µs | {m['p99']:.0f} µs | {m['ok']:,} | {m['errors']} | {m['cpu']:.2f} |")
        if m["errors"]:
            print(f"[bench] {name}: status codes {m['codes']}, errors {m['errdist']}", file=sys.stderr)
    return rows

rows = table([
    ("ECDSA P-256 sign (32-byte message)", conns, "sign"),
    ("AES-256-GCM encrypt (1 KiB)", conns, "encrypt"),
    ("ECDSA P-256 sign (32-byte message)", "1", "sign-c1"),
])
env_rows = table([
    ("Envelope encrypt (1 KiB)", conns, "env-enc-1k"),
    ("Envelope encrypt (64 KiB)", conns, "env-enc-64k"),
    ("Envelope decrypt (1 KiB, one envelope replayed)", conns, "env-dec-1k"),
    ("Envelope decrypt (64 KiB, one envelope replayed)", conns, "env-dec-64k"),
    ("Envelope encrypt (1 KiB)", "1", "env-enc-1k-c1"),
])

print(f"\n### Throughput and latency ({duration} s per run, oha over the Unix socket)\n")
print("| Operation | Connections | Requests/s | p50 | p99 | OK responses | Errors | Sidecar CPU (cores) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
print("\n".join(rows))
print("\n### Memory and start-up\n")
print("| Measure | Value |")
print("|---|---:|")
print(f"| Idle RSS (VmRSS, ready + idle) | {mib(idle):.1f} MiB |")
print(f"| Peak RSS under load (VmRSS sampled every 100 ms) | {mib(peak):.1f} MiB |")
print(f"| VmHWM after the load runs | {mib(hwm):.1f} MiB |")
print(f"| RSS after the load runs | {mib(after):.1f} MiB |")
print(f"| Cold start, exec → first 200 on /healthz, median of {cold_runs} | {cold['healthz_median_ms']:.1f} ms |")
print(f"| Cold start, min / max | {cold['healthz_min_ms']:.1f} / {cold['healthz_max_ms']:.1f} ms |")
print(f"| Cold start, exec → first 200 on /readyz, median | {cold['readyz_median_ms']:.1f} ms |")

print(f"\n### Envelope encryption, JSON API ({duration} s per run, oha over the Unix socket, key aes-256, context {{\"tenant\":\"bench\"}})\n")
print("| Operation | Connections | Requests/s | p50 | p99 | OK responses | Errors | Sidecar CPU (cores) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
print("\n".join(env_rows))
print(f"\nPeak RSS during the envelope runs (VmRSS sampled every 100 ms): {mib(env_peak):.1f} MiB")

d = datakey
with open(f"{work}/env-datakey.json") as f:
    try:
        r = json.load(f)
    except ValueError:
        r = {}
codes = {int(k): v for k, v in (r.get("statusCodeDistribution") or {}).items()}
dk_ok = sum(v for k, v in codes.items() if 200 <= k < 300)
dk_err = sum((r.get("errorDistribution") or {}).values()) + sum(v for k, v in codes.items() if not 200 <= k < 300)
saved = d["hits"] / (d["hits"] + d["calls"]) * 100 if d["hits"] + d["calls"] else 0.0
print(f"\n### Data-key cache over {d['requests']:,} envelope encrypts (oha -n, {conns} connections, one context, 32-byte plaintext)\n")
print("| Measure | Value |")
print("|---|---:|")
print(f"| Requests answered 2xx / errors | {dk_ok:,} / {dk_err}{' (timed out)' if d['timed_out'] else ''} |")
print(f"| Wall time, requests/s | {d['seconds']:.1f} s, {dk_ok / d['seconds']:,.0f} /s |")
print(f"| Sidecar CPU (cores) | {d['cpu_ticks'] / d['clk_tck'] / d['seconds']:.2f} |")
print(f"| KMS data-key calls (`datakey_cache_backend_calls_total{{op=\"generate_data_key\"}}`, delta) | {d['calls']:,} |")
print(f"| Cache hits (`datakey_cache_hits_total{{op=\"encrypt\"}}`, delta) | {d['hits']:,} |")
print(f"| Cache misses (`datakey_cache_misses_total{{op=\"encrypt\"}}`, delta) | {d['misses']:,} |")
print(f"| KMS calls saved, hits / (hits + calls) | {saved:.4f} % |")

s = stream
print("\n### Streaming envelope encryption (curl -X POST -T FILE, application/octet-stream)\n")
if "skipped" in s:
    print(f"Not measured: {s['skipped']}.")
else:
    rate = lambda secs: s["mib"] / secs if secs > 0 else 0.0
    cores = lambda ticks, secs: ticks / s["clk_tck"] / secs if secs > 0 else 0.0
    print("Output written to a file in the temp dir (as a client keeping it would):\n")
    print("| Measure | Encrypt | Decrypt |")
    print("|---|---:|---:|")
    print(f"| Plaintext | {s['mib']:,} MiB | {s['mib']:,} MiB |")
    print(f"| Uploaded / downloaded bytes | {s['enc_up']:,.0f} / {s['enc_down']:,.0f} | {s['dec_up']:,.0f} / {s['dec_down']:,.0f} |")
    print(f"| Time (curl time_total) | {s['enc_s']:.2f} s | {s['dec_s']:.2f} s |")
    print(f"| Throughput (plaintext MiB / s) | {rate(s['enc_s']):,.0f} MiB/s | {rate(s['dec_s']):,.0f} MiB/s |")
    print(f"| Sidecar CPU (cores) | {cores(s['enc_cpu'], s['enc_s']):.2f} | {cores(s['dec_cpu'], s['dec_s']):.2f} |")
    print(f"| Peak VmRSS (sampled every 100 ms) | {mib(s['enc_peak']):.1f} MiB | {mib(s['dec_peak']):.1f} MiB |")
    print(f"| curl exit code | {s['enc_rc']} | {s['dec_rc']} |")
    print("\nSame transfers, curl output to /dev/null (the client's file write not timed):\n")
    print("| Measure | Encrypt | Decrypt |")
    print("|---|---:|---:|")
    print(f"| Time (curl time_total) | {s['encn_s']:.2f} s | {s['decn_s']:.2f} s |")
    print(f"| Throughput (plaintext MiB / s) | {rate(s['encn_s']):,.0f} MiB/s | {rate(s['decn_s']):,.0f} MiB/s |")
    print(f"| Sidecar CPU (cores) | {cores(s['encn_cpu'], s['encn_s']):.2f} | {cores(s['decn_cpu'], s['decn_s']):.2f} |")
    print(f"| Peak VmRSS (sampled every 100 ms) | {mib(s['encn_peak']):.1f} MiB | {mib(s['decn_peak']):.1f} MiB |")
    print(f"| curl exit code | {s['encn_rc']} | {s['decn_rc']} |")
    print(f"\nFresh sidecar for these runs: idle VmRSS {mib(s['idle']):.1f} MiB, VmHWM after all four {mib(s['hwm']):.1f} MiB. "
          f"Decrypted output identical to the input (cmp): {'yes' if s['same'] else 'NO'}.")
PY
if $STREAM_FAILED; then die "the streaming round trip failed (see above)"; fi

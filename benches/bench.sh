#!/usr/bin/env bash
# Benchmarks the release build of kms-sidecar over its Unix socket:
#   - throughput and latency of ECDSA P-256 sign and AES-256-GCM encrypt (oha),
#   - idle RSS and RSS under load (VmRSS sampled, VmHWM),
#   - cold start: exec to the first 200 on /healthz (and /readyz), keys already
#     generated.
# The sidecar runs with the embedded default config in a fresh temp dir, so
# its keys and socket live there. All traffic stays on the Unix socket.
#
# Tunables (environment): BENCH_DURATION (s, default 10), BENCH_CONNECTIONS
# (default 16), BENCH_WARMUP (s, default 2), BENCH_IDLE (s, default 3),
# BENCH_COLD_RUNS (default 10).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/target/release/kms-sidecar

DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-16}
WARMUP=${BENCH_WARMUP:-2}
IDLE=${BENCH_IDLE:-3}
COLD_RUNS=${BENCH_COLD_RUNS:-10}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# --- build and load generator ----------------------------------------------
log "building the release binary"
cargo build --release --bin kms-sidecar
[[ -x $BIN ]] || die "$BIN was not built"

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v oha >/dev/null; then
    log "installing oha (cargo install --locked oha)"
    cargo install --locked oha
fi
OHA_HELP=$(oha --help)
# Machine-readable output: `--output-format json` on current oha (1.16 here), `-j` on older releases.
if grep -q -- '--output-format' <<<"$OHA_HELP"; then
    OHA_JSON=(--output-format json)
else
    OHA_JSON=(-j)
fi
OHA_EXTRA=()
grep -q -- '--no-tui' <<<"$OHA_HELP" && OHA_EXTRA+=(--no-tui)
# Let requests in flight at the deadline finish instead of counting them as errors.
grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP" && OHA_EXTRA+=(--wait-ongoing-requests-after-deadline)

# --- sidecar lifecycle -------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kms-sidecar-bench.XXXXXX")
SOCK=$WORK/kms-sidecar.sock
PID=""
SAMPLER=""

stop_sidecar() {
    [[ -n $PID ]] || return 0
    if kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while kill -0 "$PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
        if kill -0 "$PID" 2>/dev/null; then
            log "sidecar $PID did not stop on SIGTERM within 10 s; killing it"
            kill -KILL "$PID" 2>/dev/null || true
        fi
    fi
    wait "$PID" 2>/dev/null || true
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
    local deadline=$((SECONDS + $1)) code
    while ((SECONDS < deadline)); do
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/sidecar.log" >&2; die "sidecar exited during start-up"; }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --unix-socket "$SOCK" http://localhost/readyz || true)
        [[ $code == 200 ]] && return 0
        sleep 0.05
    done
    cat "$WORK/sidecar.log" >&2
    die "sidecar not ready within $1 s"
}

status_kib() { # status_kib FIELD -> value in KiB from /proc/$PID/status
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PID/status"
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
SAMPLE_FOR=$(( (DURATION + WARMUP) * 3 + 30 ))
(
    end=$((SECONDS + SAMPLE_FOR))
    while ((SECONDS < end)) && [[ -r /proc/$PID/status ]]; do
        awk '$1 == "VmRSS:" { print $2 }' "/proc/$PID/status" 2>/dev/null || true
        sleep 0.1
    done >"$SAMPLES"
) &
SAMPLER=$!

MSG_B64=$(head -c 32 /dev/urandom | base64 -w0)
PT_B64=$(head -c 1024 /dev/urandom | base64 -w0)

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of the sidecar, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$PID/stat"
}

# run_oha NAME CONNECTIONS PATH BODY -> writes $WORK/NAME.json and $WORK/NAME.cpu
# (the sidecar's CPU use during the measured run, in cores).
run_oha() {
    local name=$1 conns=$2 path=$3 body=$4 t0 t1 c0 c1
    local common=(--unix-socket "$SOCK" -c "$conns" -m POST -H 'content-type: application/json' -d "$body" "${OHA_EXTRA[@]}")
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

kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
PEAK_RSS_KIB=$(sort -n "$SAMPLES" | tail -n 1)
PEAK_RSS_KIB=${PEAK_RSS_KIB:-0}
HWM_KIB=$(status_kib VmHWM)
AFTER_RSS_KIB=$(status_kib VmRSS)

# Sanity: one of each request answered 200 with the expected shape.
curl -sf --max-time 5 --unix-socket "$SOCK" -H 'content-type: application/json' \
    -d "{\"message\":\"$MSG_B64\"}" http://localhost/v1/keys/ecdsa-p256/sign | grep -q '"signature"' \
    || die "sign request did not return a signature"
curl -sf --max-time 5 --unix-socket "$SOCK" -H 'content-type: application/json' \
    -d "{\"plaintext\":\"$PT_B64\"}" http://localhost/v1/keys/aes-256/encrypt | grep -q '"ciphertext"' \
    || die "encrypt request did not return a ciphertext"

# --- 5. report ---------------------------------------------------------------
python3 - "$WORK" "$CONNS" "$DURATION" "$IDLE_RSS_KIB" "$PEAK_RSS_KIB" "$HWM_KIB" "$AFTER_RSS_KIB" "$COLD_JSON" "$COLD_RUNS" <<'PY'
import json, sys

work, conns, duration = sys.argv[1], sys.argv[2], sys.argv[3]
idle, peak, hwm, after = (int(x) for x in sys.argv[4:8])
cold, cold_runs = json.loads(sys.argv[8]), sys.argv[9]

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
rows = []
for label, c, name in [
    ("ECDSA P-256 sign (32-byte message)", conns, "sign"),
    ("AES-256-GCM encrypt (1 KiB)", conns, "encrypt"),
    ("ECDSA P-256 sign (32-byte message)", "1", "sign-c1"),
]:
    m = load(name)
    rows.append(f"| {label} | {c} | {m['rps']:,.0f} | {m['p50']:.0f} µs | {m['p99']:.0f} µs | {m['ok']:,} | {m['errors']} | {m['cpu']:.2f} |")
    if m["errors"]:
        print(f"[bench] {name}: status codes {m['codes']}, errors {m['errdist']}", file=sys.stderr)

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
PY

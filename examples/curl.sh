#!/usr/bin/env bash
# A tour of the kms-sidecar API with curl, one step per route. It doubles as a
# smoke test: every step checks its answer and the script exits non-zero at the
# first one that is not what it should be.
#
#   make run                      # in one terminal (embedded default config)
#   examples/curl.sh              # in another, from the same directory
#
# The socket is $KMS_SIDECAR_SOCKET, or ./kms-sidecar.sock. The keys used are
# the aliases of the embedded default config: ecdsa-p256, ed25519, rsa-3072,
# aes-256 (rotated by this script) and hmac-256.
#
# Needs bash, curl, base64 and either jq or python3 (to read JSON fields);
# openssl is used when present to check a signature independently.
set -euo pipefail

SOCK="${KMS_SIDECAR_SOCKET:-./kms-sidecar.sock}"
BASE="http://localhost"

if [[ ! -S "$SOCK" ]]; then
    echo "error: no socket at $SOCK; start the sidecar (make run) or set KMS_SIDECAR_SOCKET" >&2
    exit 1
fi

if command -v jq >/dev/null 2>&1 && [[ -z "${KMS_CURL_NO_JQ:-}" ]]; then
    JSON_TOOL=jq
elif command -v python3 >/dev/null 2>&1; then
    JSON_TOOL=python3
else
    echo "error: this script needs jq or python3 to read JSON" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

STEP=0
STATUS=""
BODY=""

step() {
    STEP=$((STEP + 1))
    printf '\n== %d. %s\n' "$STEP" "$*"
}

say() { printf '   %s\n' "$*"; }

fail() {
    printf '\nFAIL (step %d): %s\n' "$STEP" "$*" >&2
    if [[ -n "$BODY" ]]; then
        printf '   last response: HTTP %s %s\n' "$STATUS" "$BODY" >&2
    fi
    exit 1
}

# call METHOD PATH [JSON]: sets STATUS and BODY. Only a transport error (no
# sidecar, broken socket) makes curl itself fail.
call() {
    local method="$1" path="$2" data="${3-}"
    local args=(-sS --unix-socket "$SOCK" -X "$method" -o "$TMP/body" -w '%{http_code}'
        -H "x-request-id: curl-tour-$STEP")
    if [[ $# -ge 3 ]]; then
        args+=(-H 'content-type: application/json' --data-binary "$data")
    fi
    STATUS="$(curl "${args[@]}" "$BASE$path")" || fail "curl could not reach $SOCK ($method $path)"
    BODY="$(cat "$TMP/body")"
}

# get PATH...: fields of the JSON in $BODY. A path is dot separated: object
# keys, array indices, or `*` for every element (one output line each).
# Strings print raw, anything else as compact JSON; a missing field is `null`.
get() {
    local path
    for path in "$@"; do
        if [[ "$JSON_TOOL" == jq ]]; then
            local filter="" part parts
            IFS=. read -ra parts <<<"$path"
            for part in "${parts[@]}"; do
                if [[ "$part" == "*" ]]; then
                    filter+="[]?"
                elif [[ "$part" =~ ^[0-9]+$ ]]; then
                    filter+="[$part]?"
                else
                    filter+="[\"$part\"]?"
                fi
            done
            printf '%s' "$BODY" | jq -rc ".$filter" || fail "response is not JSON"
        else
            printf '%s' "$BODY" | python3 -c '
import json, sys

def walk(v, parts):
    if not parts:
        yield v
        return
    p, rest = parts[0], parts[1:]
    if p == "*":
        for x in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else []):
            yield from walk(x, rest)
    elif isinstance(v, list) and p.isdigit():
        yield from walk(v[int(p)] if int(p) < len(v) else None, rest)
    elif isinstance(v, dict):
        yield from walk(v.get(p), rest)
    else:
        yield None

for v in walk(json.load(sys.stdin), sys.argv[1].split(".")):
    print(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
' "$path" || fail "response is not JSON"
        fi
    done
}

expect_status() {
    [[ "$STATUS" == "$1" ]] || fail "expected HTTP $1, got HTTP $STATUS"
}

# expect_field PATH VALUE
expect_field() {
    local got
    got="$(get "$1")"
    [[ "$got" == "$2" ]] || fail "expected $1 = $2, got $got"
}

# A field that must be present and not empty; printed to stdout.
need() {
    local v
    v="$(get "$1")"
    [[ -n "$v" && "$v" != null ]] || fail "response has no $1"
    printf '%s' "$v"
}

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
unb64() { printf '%s' "$1" | base64 -d; }

sha256_b64() {
    if command -v openssl >/dev/null 2>&1; then
        printf '%s' "$1" | openssl dgst -sha256 -binary | base64 | tr -d '\n'
    else
        printf '%s' "$1" | python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha256(sys.stdin.buffer.read()).digest()).decode(), end="")'
    fi
}

echo "kms-sidecar API tour on $SOCK (JSON via $JSON_TOOL)"

# --- probes ---

step "GET /healthz"
call GET /healthz
expect_status 200
expect_field status ok
say "$BODY"

step "GET /readyz"
call GET /readyz
expect_status 200
expect_field status ready
say "$BODY"

# --- keys ---

step "GET /v1/keys"
call GET /v1/keys
expect_status 200
keys="$(get keys.*.name | tr '\n' ' ')"
say "keys: $keys"
for k in ecdsa-p256 ed25519 rsa-3072 aes-256 hmac-256; do
    [[ " $keys " == *" $k "* ]] || fail "key $k is not listed"
done

step "GET /v1/keys/ecdsa-p256 (metadata)"
call GET /v1/keys/ecdsa-p256
expect_status 200
expect_field name ecdsa-p256
expect_field algorithm ecdsa-p256-sha256
expect_field purpose sign
say "algorithm $(get algorithm), backend $(get backend) ($(get backend_type)), current version $(get current_version)"
say "rotation: $(get rotation)"

step "GET /v1/keys/ecdsa-p256/public-key"
call GET /v1/keys/ecdsa-p256/public-key
expect_status 200
pem="$(need pem)"
[[ "$pem" == "-----BEGIN PUBLIC KEY-----"* ]] || fail "pem is not a PEM public key"
printf '%s\n' "$pem" >"$TMP/ecdsa.pem"
expect_field jwk.kty EC
say "version $(get version), jwk kid $(get jwk.kid)"
printf '%s\n' "$pem" | sed 's/^/   /'

# --- signatures ---

MSG="hello from curl.sh"
MSG_B64="$(b64 "$MSG")"

step "POST /v1/keys/ecdsa-p256/sign (message)"
call POST /v1/keys/ecdsa-p256/sign "{\"message\":\"$MSG_B64\"}"
expect_status 200
expect_field algorithm ecdsa-p256-sha256
sig="$(need signature)"
say "signature (DER, base64): $sig"

step "POST /v1/keys/ecdsa-p256/verify (same message)"
call POST /v1/keys/ecdsa-p256/verify "{\"message\":\"$MSG_B64\",\"signature\":\"$sig\"}"
expect_status 200
expect_field valid true
say "$BODY"

if command -v openssl >/dev/null 2>&1; then
    say "openssl agrees with the public key from step 5:"
    unb64 "$sig" >"$TMP/sig.der"
    printf '%s' "$MSG" >"$TMP/msg"
    out="$(openssl dgst -sha256 -verify "$TMP/ecdsa.pem" -signature "$TMP/sig.der" "$TMP/msg" 2>&1)" ||
        fail "openssl does not verify the signature: $out"
    say "  $out"
fi

step "POST /v1/keys/ecdsa-p256/verify (tampered message)"
call POST /v1/keys/ecdsa-p256/verify "{\"message\":\"$(b64 "${MSG}!")\",\"signature\":\"$sig\"}"
expect_status 200
expect_field valid false
say "$BODY"

step "POST /v1/keys/ecdsa-p256/sign (SHA-256 digest computed here)"
DIGEST_B64="$(sha256_b64 "$MSG")"
say "digest: $DIGEST_B64"
call POST /v1/keys/ecdsa-p256/sign "{\"digest\":\"$DIGEST_B64\"}"
expect_status 200
dsig="$(need signature)"
say "signature: $dsig"
# A signature over the digest verifies against the message, and vice versa.
call POST /v1/keys/ecdsa-p256/verify "{\"message\":\"$MSG_B64\",\"signature\":\"$dsig\"}"
expect_status 200
expect_field valid true
call POST /v1/keys/ecdsa-p256/verify "{\"digest\":\"$DIGEST_B64\",\"signature\":\"$sig\"}"
expect_status 200
expect_field valid true
say "digest signature verifies against the message, message signature against the digest"

step "POST /v1/keys/rsa-3072/sign-batch (2 messages + 1 digest)"
M1="$(b64 "first")"
M2="$(b64 "second")"
call POST /v1/keys/rsa-3072/sign-batch \
    "{\"items\":[{\"message\":\"$M1\"},{\"message\":\"$M2\"},{\"digest\":\"$DIGEST_B64\"}]}"
expect_status 200
expect_field algorithm rsa-pss-3072-sha256
mapfile -t sigs < <(get 'signatures.*')
[[ ${#sigs[@]} -eq 3 ]] || fail "expected 3 signatures, got ${#sigs[@]}"
say "${#sigs[@]} signatures, key version $(get version)"
call POST /v1/keys/rsa-3072/verify "{\"message\":\"$M2\",\"signature\":\"${sigs[1]}\"}"
expect_status 200
expect_field valid true
call POST /v1/keys/rsa-3072/verify "{\"message\":\"$M1\",\"signature\":\"${sigs[1]}\"}"
expect_status 200
expect_field valid false
call POST /v1/keys/rsa-3072/verify "{\"message\":\"$MSG_B64\",\"signature\":\"${sigs[2]}\"}"
expect_status 200
expect_field valid true
say "signatures[1] verifies for \"second\" and not for \"first\"; signatures[2] for the digest's message"

step "POST /v1/keys/ecdsa-p256/jwt, GET /v1/jwks, POST /v1/jwt/verify"
call POST /v1/keys/ecdsa-p256/jwt '{"claims":{"sub":"svc-a","aud":"svc-b"},"ttl":"10m"}'
expect_status 200
expect_field alg ES256
jwt="$(need jwt)"
kid="$(need kid)"
say "kid $kid, expires $(get expires_at)"
call GET /v1/jwks
expect_status 200
get 'keys.*.kid' | grep -qx "$kid" || fail "the JWKS has no key $kid"
call POST /v1/jwt/verify "{\"jwt\":\"$jwt\",\"audience\":\"svc-b\"}"
expect_status 200
expect_field valid true
expect_field claims.sub svc-a
call POST /v1/jwt/verify "{\"jwt\":\"$jwt\",\"audience\":\"svc-c\"}"
expect_status 200
expect_field valid false
say "the JWT verifies for audience svc-b and not for svc-c"

# --- encryption ---

SECRET="the launch code is 0000"
SECRET_B64="$(b64 "$SECRET")"
CTX='{"app":"curl-tour","tenant":"42"}'

step "POST /v1/keys/aes-256/encrypt (with context $CTX)"
call POST /v1/keys/aes-256/encrypt "{\"plaintext\":\"$SECRET_B64\",\"context\":$CTX}"
expect_status 200
ct="$(need ciphertext)"
ct_version="$(need version)"
say "ciphertext: $ct (key version $ct_version)"

step "POST /v1/keys/aes-256/decrypt (same context)"
call POST /v1/keys/aes-256/decrypt "{\"ciphertext\":\"$ct\",\"context\":$CTX}"
expect_status 200
pt="$(need plaintext)"
[[ "$pt" == "$SECRET_B64" ]] || fail "decrypted $pt, expected $SECRET_B64"
say "plaintext: \"$(unb64 "$pt")\" (matches)"

step "POST /v1/keys/aes-256/decrypt (different context: must fail)"
call POST /v1/keys/aes-256/decrypt "{\"ciphertext\":\"$ct\",\"context\":{\"app\":\"curl-tour\",\"tenant\":\"43\"}}"
expect_status 422
expect_field error.code decryption_failed
expect_field error.request_id "curl-tour-$STEP"
say "HTTP $STATUS $BODY"

step "POST /v1/keys/aes-256/datakey (256 bits, same context)"
call POST /v1/keys/aes-256/datakey "{\"context\":$CTX,\"bits\":256}"
expect_status 200
dk_plain="$(need plaintext_key)"
dk_enc="$(need encrypted_key)"
dk_len="$(unb64 "$dk_plain" | wc -c | tr -d ' ')"
[[ "$dk_len" -eq 32 ]] || fail "plaintext_key is $dk_len bytes, expected 32"
say "plaintext_key: 32 bytes (use it locally, then forget it)"
say "encrypted_key: $dk_enc (store it next to the data)"
call POST /v1/keys/aes-256/decrypt "{\"ciphertext\":\"$dk_enc\",\"context\":$CTX}"
expect_status 200
[[ "$(need plaintext)" == "$dk_plain" ]] || fail "encrypted_key does not decrypt to plaintext_key"
say "decrypt(encrypted_key) == plaintext_key"

# --- MACs ---

step "POST /v1/keys/aes-256/envelope/encrypt and decrypt (JSON, same context)"
call POST /v1/keys/aes-256/envelope/encrypt "{\"plaintext\":\"$SECRET_B64\",\"context\":$CTX}"
expect_status 200
envelope="$(need envelope)"
[[ "$(unb64 "$envelope" | head -c 4)" == "KSE1" ]] || fail "the envelope does not start with KSE1"
call POST /v1/keys/aes-256/envelope/decrypt "{\"envelope\":\"$envelope\",\"context\":$CTX}"
expect_status 200
[[ "$(need plaintext)" == "$SECRET_B64" ]] || fail "the envelope did not open to the plaintext"
say "envelope: $(unb64 "$envelope" | wc -c | tr -d ' ') bytes, opens to the plaintext"

step "POST /v1/keys/aes-256/envelope/encrypt and decrypt (streamed, 1 MiB)"
head -c 1048576 /dev/urandom >"$TMP/data.bin"
curl -sS --unix-socket "$SOCK" -H 'content-type: application/octet-stream' -H "x-encryption-context: $CTX" \
    --data-binary @"$TMP/data.bin" -o "$TMP/data.env" "$BASE/v1/keys/aes-256/envelope/encrypt" ||
    fail "streamed envelope encryption failed"
curl -sS --fail --unix-socket "$SOCK" -H 'content-type: application/octet-stream' -H "x-encryption-context: $CTX" \
    --data-binary @"$TMP/data.env" -o "$TMP/data.out" "$BASE/v1/keys/aes-256/envelope/decrypt" ||
    fail "streamed envelope decryption failed"
cmp -s "$TMP/data.bin" "$TMP/data.out" || fail "the streamed round trip changed the data"
say "1 MiB -> $(wc -c <"$TMP/data.env" | tr -d ' ') byte envelope -> the same 1 MiB"

step "POST /v1/keys/hmac-256/mac"
call POST /v1/keys/hmac-256/mac "{\"message\":\"$MSG_B64\"}"
expect_status 200
mac="$(need mac)"
say "mac: $mac (version $(get version))"

step "POST /v1/keys/hmac-256/verify-mac (same message, then tampered)"
call POST /v1/keys/hmac-256/verify-mac "{\"message\":\"$MSG_B64\",\"mac\":\"$mac\"}"
expect_status 200
expect_field valid true
say "same message:     $BODY"
call POST /v1/keys/hmac-256/verify-mac "{\"message\":\"$(b64 "${MSG}!")\",\"mac\":\"$mac\"}"
expect_status 200
expect_field valid false
say "tampered message: $BODY"

# --- rotation ---

step "POST /v1/keys/aes-256/rotate"
call POST /v1/keys/aes-256/rotate '{}'
expect_status 200
expect_field key aes-256
new_version="$(need version)"
[[ "$new_version" != "$ct_version" ]] || fail "rotation kept version $ct_version"
say "aes-256: version $ct_version -> $new_version"
call GET /v1/keys/aes-256
expect_status 200
expect_field current_version "$new_version"

step "old ciphertext (version $ct_version) still decrypts; new encryptions use $new_version"
call POST /v1/keys/aes-256/decrypt "{\"ciphertext\":\"$ct\",\"context\":$CTX}"
expect_status 200
[[ "$(need plaintext)" == "$SECRET_B64" ]] || fail "old ciphertext decrypted to something else after rotation"
say "old ciphertext -> \"$SECRET\""
call POST /v1/keys/aes-256/encrypt "{\"plaintext\":\"$SECRET_B64\",\"context\":$CTX}"
expect_status 200
expect_field version "$new_version"
say "new ciphertext uses version $new_version"

# --- metrics ---

step "GET /metrics (kms_sidecar_requests_total)"
call GET /metrics
expect_status 200
lines="$(grep '^kms_sidecar_requests_total' <<<"$BODY" || true)"
[[ -n "$lines" ]] || fail "no kms_sidecar_requests_total lines in /metrics"
grep -q 'op="sign"' <<<"$lines" || fail "no kms_sidecar_requests_total line for op=\"sign\""
grep -q 'code="decryption_failed"' <<<"$lines" || fail "the failed decrypt is not counted"
while IFS= read -r line; do say "$line"; done <<<"$lines"
BODY=""

printf '\nOK: all %d steps gave the expected answers\n' "$STEP"

#!/bin/sh
# A minimal app container using kms-sidecar: wait for the socket, then sign
# and verify a message and encrypt and decrypt a record (envelope
# encryption), with nothing but sh, curl and base64 (curlimages/curl has
# them). Exits 0 when every step gave the right answer, so it serves as a
# Job's command; with LOOP_SECONDS set it repeats forever (a Deployment).
#
#   KMS_SIDECAR_SOCKET  the socket (the webhook sets it; default /var/run/kms/kms.sock)
#   SIGN_KEY, DATA_KEY  key aliases of the sidecar config (default: signing, data)
#   WAIT_SECONDS        how long to wait for the sidecar (default 60)
set -eu

SOCK="${KMS_SIDECAR_SOCKET:-/var/run/kms/kms.sock}"
SIGN_KEY="${SIGN_KEY:-signing}"
DATA_KEY="${DATA_KEY:-data}"
WAIT_SECONDS="${WAIT_SECONDS:-60}"

# POST JSON to the sidecar; an error answer (JSON with a stable `code`) is
# printed to stderr and fails.
api() {
    if ! answer=$(curl -sS --fail-with-body --unix-socket "$SOCK" \
        -H 'content-type: application/json' -d "$2" "http://kms/v1/keys/$1"); then
        echo "kms-sidecar $1: $answer" >&2
        return 1
    fi
    printf '%s' "$answer"
}
# The string value of a top-level JSON field (the API's values never contain quotes).
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

# A native sidecar is ready before the app starts; a regular one (clusters
# before 1.29) may not be, so wait for readiness either way.
waited=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://kms/readyz 2>/dev/null)" = 200 ]; do
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        echo "kms-sidecar not ready at $SOCK after ${WAIT_SECONDS}s" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

run_once() {
    message=$(b64 "invoice 42: pay 100 EUR")
    signature=$(api "$SIGN_KEY/sign" "{\"message\":\"$message\"}" | field signature)
    [ -n "$signature" ] || { echo "sign: no signature" >&2; return 1; }
    api "$SIGN_KEY/verify" "{\"message\":\"$message\",\"signature\":\"$signature\"}" | grep -q '"valid":true' \
        || { echo "verify: the signature did not verify" >&2; return 1; }
    echo "signed and verified with $SIGN_KEY"

    record=$(b64 '{"customer":"c-1001","iban":"DE02120300000000202051"}')
    context='{"table":"customers","row":"c-1001"}'
    envelope=$(api "$DATA_KEY/envelope/encrypt" "{\"plaintext\":\"$record\",\"context\":$context}" | field envelope)
    [ -n "$envelope" ] || { echo "envelope/encrypt: no envelope" >&2; return 1; }
    plaintext=$(api "$DATA_KEY/envelope/decrypt" "{\"envelope\":\"$envelope\",\"context\":$context}" | field plaintext)
    [ "$plaintext" = "$record" ] || { echo "envelope/decrypt: a different record came back" >&2; return 1; }
    echo "encrypted and decrypted a record with $DATA_KEY"
}

run_once
if [ -n "${LOOP_SECONDS:-}" ]; then
    while sleep "$LOOP_SECONDS"; do run_once; done
fi

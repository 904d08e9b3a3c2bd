"""The transit scenario of tests/clients/README.md, written against hvac as
an app developer would: `client.secrets.transit` methods, nothing raw.

VAULT_ADDR may be http://host:port or unix:///path/to/kms.sock; for the
latter the hvac client gets a requests session that speaks HTTP over the
Unix socket (requests-unixsocket2).
"""

import base64
import os
import sys
import urllib.parse

import hvac
import hvac.exceptions

MOUNT = os.environ.get("TRANSIT_MOUNT", "transit")
PLAINTEXT = b"the quick brown fox"


class Failed(Exception):
    pass


def check(condition, why):
    if not condition:
        raise Failed(why)


def b64(data):
    return base64.b64encode(data).decode()


def connect():
    addr = os.environ["VAULT_ADDR"]
    token = os.environ["VAULT_TOKEN"]
    if addr.startswith("unix://"):
        import requests_unixsocket

        socket = urllib.parse.quote(addr[len("unix://") :], safe="")
        return hvac.Client(
            url=f"http+unix://{socket}",
            token=token,
            session=requests_unixsocket.Session(),
        )
    return hvac.Client(url=addr, token=token)


def encrypt_decrypt(transit, state):
    data = transit.encrypt_data("aes", b64(PLAINTEXT), mount_point=MOUNT)["data"]
    check(data["ciphertext"].startswith("vault:v1:"), f"ciphertext {data['ciphertext']!r}")
    state["ciphertext"] = data["ciphertext"]
    back = transit.decrypt_data("aes", data["ciphertext"], mount_point=MOUNT)["data"]
    check(back["plaintext"] == b64(PLAINTEXT), f"decrypted {back['plaintext']!r}")


def batch(transit, _state):
    plaintexts = [b64(b"one"), b64(b"two"), b64(b"three")]
    sealed = transit.encrypt_data(
        "aes", batch_input=[{"plaintext": p} for p in plaintexts], mount_point=MOUNT
    )["data"]["batch_results"]
    check(len(sealed) == 3, f"{len(sealed)} encrypt results")
    check(all("error" not in r and r["ciphertext"].startswith("vault:v1:") for r in sealed), f"encrypt results {sealed}")
    opened = transit.decrypt_data(
        "aes", batch_input=[{"ciphertext": r["ciphertext"]} for r in sealed], mount_point=MOUNT
    )["data"]["batch_results"]
    check([r.get("plaintext") for r in opened] == plaintexts, f"decrypt results {opened}")


def sign_verify(key, **algorithm):
    def step(transit, _state):
        message, other = b64(b"signed message"), b64(b"another message")
        signature = transit.sign_data(
            key, hash_input=message, hash_algorithm="sha2-256", mount_point=MOUNT, **algorithm
        )["data"]["signature"]
        check(signature.startswith("vault:v1:"), f"signature {signature!r}")
        for data, valid in ((message, True), (other, False)):
            answer = transit.verify_signed_data(
                key, data, signature=signature, hash_algorithm="sha2-256", mount_point=MOUNT, **algorithm
            )["data"]
            check(answer["valid"] is valid, f"verify of {data!r} said {answer}")

    return step


def hmac(transit, _state):
    message, other = b64(b"mac'd message"), b64(b"another message")
    mac = transit.generate_hmac("mac", message, algorithm="sha2-256", mount_point=MOUNT)["data"]["hmac"]
    check(mac.startswith("vault:v1:"), f"hmac {mac!r}")
    for data, valid in ((message, True), (other, False)):
        answer = transit.verify_signed_data(
            "mac", data, hmac=mac, hash_algorithm="sha2-256", mount_point=MOUNT
        )["data"]
        check(answer["valid"] is valid, f"verify of {data!r} said {answer}")


def datakey(transit, _state):
    key = transit.generate_data_key("aes", key_type="plaintext", mount_point=MOUNT)["data"]
    check(len(base64.b64decode(key["plaintext"])) == 32, f"plaintext key {key['plaintext']!r}")
    check(key["ciphertext"].startswith("vault:v1:"), f"ciphertext {key['ciphertext']!r}")
    back = transit.decrypt_data("aes", key["ciphertext"], mount_point=MOUNT)["data"]
    check(back["plaintext"] == key["plaintext"], "the ciphertext does not decrypt to the key")
    wrapped = transit.generate_data_key("aes", key_type="wrapped", mount_point=MOUNT)["data"]
    check(wrapped["ciphertext"].startswith("vault:v1:"), f"ciphertext {wrapped['ciphertext']!r}")
    check(not wrapped.get("plaintext"), f"wrapped key has a plaintext: {wrapped}")


def rotate_rewrap(transit, state):
    transit.rotate_key("aes", mount_point=MOUNT)
    latest = transit.read_key("aes", mount_point=MOUNT)["data"]["latest_version"]
    check(latest == 2, f"latest_version {latest!r}")
    rewrapped = transit.rewrap_data("aes", state["ciphertext"], mount_point=MOUNT)["data"]["ciphertext"]
    check(rewrapped.startswith("vault:v2:"), f"rewrapped {rewrapped!r}")
    back = transit.decrypt_data("aes", rewrapped, mount_point=MOUNT)["data"]
    check(back["plaintext"] == b64(PLAINTEXT), f"decrypted {back['plaintext']!r}")


def read_key(transit, _state):
    key = transit.read_key("ec", mount_point=MOUNT)["data"]
    check(key["type"] == "ecdsa-p256", f"type {key['type']!r}")
    public = key["keys"]["1"]["public_key"]
    check(public.startswith("-----BEGIN PUBLIC KEY-----"), f"public_key {public!r}")


def denied(transit, _state):
    try:
        transit.encrypt_data("secret", b64(PLAINTEXT), mount_point=MOUNT)
    except hvac.exceptions.Forbidden:
        return
    raise Failed("encrypt with `secret` was not refused with 403")


STEPS = [
    ("encrypt-decrypt", encrypt_decrypt),
    ("batch", batch),
    ("sign-verify-ecdsa", sign_verify("ec")),
    ("sign-verify-rsa-pss", sign_verify("rsa", signature_algorithm="pss")),
    ("sign-verify-rsa-pkcs1v15", sign_verify("rsa", signature_algorithm="pkcs1v15")),
    ("hmac", hmac),
    ("datakey", datakey),
    ("rotate-rewrap", rotate_rewrap),
    ("read-key", read_key),
    ("denied", denied),
]


def main():
    transit = connect().secrets.transit
    state = {}
    for name, step in STEPS:
        try:
            step(transit, state)
        except Exception as e:  # noqa: BLE001 - every failure is the step's
            print(f"FAIL: {name}: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"ok: {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

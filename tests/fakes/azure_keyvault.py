#!/usr/bin/env python3
"""Contract fake of Azure Key Vault (keys) and the Microsoft identity platform.

Azure has no local server. This fake, written from Microsoft's public REST
reference (see tests/fakes/README.md), is what the kms-sidecar tests and
`make fake-azure` run the sidecar's Azure backend against. It is NOT Azure:
keys live in memory, tokens are opaque strings only this process knows.

    python3 tests/fakes/azure_keyvault.py --dir DIR [--port N] [--uid UID]

Serves HTTPS on 127.0.0.1 and writes DIR/{ca.pem, server.pem, server-key.pem,
federated-token, client-secret, identity-header, env, env.msi, config.yaml}
and, last, DIR/url. Standard library + `cryptography` only (and fakeserver.py beside it).
"""
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shlex
import ssl
import sys
import threading
import time
import traceback
import uuid
from urllib.parse import parse_qs, quote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed, decode_dss_signature, encode_dss_signature)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fakeserver import QuietHandler, QuietServer, b64u, parse_args, serve, write_file

TENANT_ID = "72f988bf-0000-4000-8000-00000000fa4e"
CLIENT_ID = "3c1b2a40-0000-4000-8000-0000000c11e7"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
DEFAULT_SUBJECT = "system:serviceaccount:default:app"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OP_PERMISSION = {"sign": "sign", "verify": "verify", "encrypt": "encrypt", "decrypt": "decrypt",
                 "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
STAT_OPS = tuple(OP_PERMISSION) + ("get", "versions", "list", "rotate", "rotationpolicy", "update", "create")
CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48),
          "P-521": (ec.SECP521R1, 66), "P-256K": (ec.SECP256K1, 32)}
EC_ALGS = {"ES256": ("P-256", hashes.SHA256), "ES384": ("P-384", hashes.SHA384),
           "ES512": ("P-521", hashes.SHA512), "ES256K": ("P-256K", hashes.SHA256)}
RSA_SIGN = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512,
            "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512}
RSA_ENC = {"RSA-OAEP": hashes.SHA1, "RSA-OAEP-256": hashes.SHA256, "RSA1_5": None}
KEY_OPS = {"EC": ("sign", "verify"), "oct": ("encrypt", "decrypt", "wrapKey", "unwrapKey"),
           "RSA": ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")}
MAX_BODY = 1 << 20
STATE = None  # the one State, set in main()


def unb64u(text):
    """Strict, canonical base64url (padding optional); ValueError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    text = text.rstrip("=")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) if len(text) % 4 != 1 else None
    if data is None or b64u(data) != text:
        raise ValueError("not base64url")
    return data


def utc(t=None):
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc)


class KVError(Exception):
    """A Key Vault error answer: {"error":{"code","message"[,"innererror"]}}."""

    def __init__(self, status, code, message, inner=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.inner, self.headers = status, code, message, inner, headers

    def body(self):
        err = {"code": self.code, "message": self.message}
        return {"error": {**err, "innererror": {"code": self.inner}} if self.inner else err}


def bad(message):
    return KVError(400, "BadParameter", message)


class AADError(Exception):
    """A Microsoft identity platform error (RFC 6749 §5.2 plus Entra's fields)."""

    def __init__(self, status, error, code, description, headers=None):
        super().__init__(description)
        self.status, self.error, self.code, self.description, self.headers = (
            status, error, code, description, headers)

    def body(self, correlation):
        trace, ts = str(uuid.uuid4()), utc().strftime("%Y-%m-%d %H:%M:%SZ")
        # Echoed values are cleaned so the text needs no JSON escape: azure_identity 1.0 reads
        # error_description as a borrowed &str, which cannot hold one.
        desc = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in self.description)
        return {"error": self.error, "error_description": f"AADSTS{self.code}: {desc} Trace ID: {trace} "
                f"Correlation ID: {correlation} Timestamp: {ts}", "error_codes": [self.code],
                "timestamp": ts, "trace_id": trace, "correlation_id": correlation,
                "error_uri": f"https://login.microsoftonline.com/error?code={self.code}"}


# ---------------------------------------------------------------- TLS setup

def make_tls(d):
    """A fresh test CA (CA:true, keyCertSign) and a server certificate for 127.0.0.1/localhost
    (v3, serverAuth, SAN, not a CA): what rustls/webpki accept."""
    now, pem = utc(), serialization.Encoding.PEM
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms-sidecar fake-azure test CA")])

    def cert(subject, key, days):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=days)))
    ca = (cert(ca_name, ca_key, 365)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), leaf_key, 90)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = os.path.join(d, "server.pem"), os.path.join(d, "server-key.pem")
    write_file(os.path.join(d, "ca.pem"), ca.public_bytes(pem).decode())
    write_file(cert_path, leaf.public_bytes(pem).decode())
    write_file(key_path, leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode(), 0o600)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


# -------------------------------------------------------------------- state

class Version:
    """One key version; the private material never leaves this process."""

    def __init__(self, kty, crv, size, exponent, ops, enabled, tags, nbf, exp):
        self.id = uuid.uuid4().hex
        self.kty, self.crv, self.size, self.exponent, self.ops = kty, crv, size, exponent, ops
        self.enabled, self.tags, self.nbf, self.exp = enabled, tags, nbf, exp
        self.created = self.updated = int(time.time())
        if kty.startswith("EC"):
            self.key = ec.generate_private_key(CURVES[crv][0]())
        elif kty.startswith("RSA"):
            self.key = rsa.generate_private_key(exponent, size)
        else:
            self.key = secrets.token_bytes(size // 8)


class State:
    def __init__(self, d, base):
        self.dir, self.base = d, base
        self.lock = threading.RLock()
        self.keys = {}      # lower-case name -> {"name", "versions": [Version], "policy"}
        self.tokens = {}    # access token -> {"aud", "exp", "revoked"}
        self.access_token_ttl, self.federated_subject = 3600, DEFAULT_SUBJECT
        self.throttles = {"keyvault": [0, 1], "token": [0, 1]}   # [count left, Retry-After]
        self.token_requests, self.unauthorized, self.throttled = [], 0, 0
        self.kv_requests = dict.fromkeys(STAT_OPS, 0)
        self.traceparents = []  # the W3C `traceparent` of the last Key Vault calls that sent one
        self.issuer = base + "/oidc"    # stands for the cluster's service-account issuer
        self.issuer_key = ec.generate_private_key(ec.SECP256R1())
        self.issuer_kid = b64u(hashlib.sha256(self.issuer_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()[:16])
        self.client_secret, self.identity_header = secrets.token_urlsafe(32), str(uuid.uuid4())

    def take_throttle(self, target):
        with self.lock:
            slot = self.throttles[target]
            if slot[0] <= 0:
                return None
            slot[0] -= 1
            self.throttled += 1
            return {"Retry-After": str(slot[1])}

    def issue_token(self, audience):
        token = secrets.token_urlsafe(48)
        with self.lock:
            ttl = self.access_token_ttl
            self.tokens[token] = {"aud": audience, "exp": time.time() + ttl, "revoked": False}
        return token, ttl

    def mint_federated(self, ttl=3600, aud=None, sub=None):
        """A Kubernetes-service-account-like JWT (ES256) for the federated credential."""
        now = int(time.time())
        iat = now if ttl > 0 else now + ttl - 3600
        claims = {"aud": aud if isinstance(aud, list) else [aud or EXCHANGE_AUDIENCE], "exp": now + ttl,
                  "iat": iat, "nbf": iat, "iss": self.issuer, "sub": sub or DEFAULT_SUBJECT,
                  "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "app"}}}
        head = b64u(json.dumps({"alg": "ES256", "kid": self.issuer_kid, "typ": "JWT"}).encode())
        signing_input = head + "." + b64u(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.issuer_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# ----------------------------------------------------------------- identity

def check_assertion(st, assertion):
    """Stands for Entra checking a federated identity credential: the signature by the issuer's key
    (its OIDC keys), then issuer, subject, audience, and the time range (no clock skew allowed)."""
    try:
        h64, c64, s64 = assertion.split(".")
        header, claims, sig = json.loads(unb64u(h64)), json.loads(unb64u(c64)), unb64u(s64)
        exp, nbf, iat = claims["exp"], claims.get("nbf", 0), claims.get("iat", 0)
        if not isinstance(header, dict) or not all(type(t) in (int, float) for t in (exp, nbf, iat)):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AADError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
    try:
        if header.get("alg") != "ES256" or len(sig) != 64:
            raise InvalidSignature
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        st.issuer_key.public_key().verify(der, f"{h64}.{c64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AADError(401, "invalid_client", 700027, "Client assertion failed signature validation.")
    fic = ("Please check your federated identity credential Subject, Audience and Issuer against the presented "
           "assertion. https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation")
    aud = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
    for code, what, ok, shown in ((700211, "issuer", claims.get("iss") == st.issuer, claims.get("iss")),
                                  (700213, "subject", claims.get("sub") == st.federated_subject, claims.get("sub")),
                                  (700212, "audience", EXCHANGE_AUDIENCE in aud, ",".join(map(str, aud)))):
        if not ok:
            raise AADError(401, "invalid_client", code, "No matching federated identity record found for "
                           f"presented assertion {what} '{shown}'. {fic}")
    now = time.time()
    if exp <= now or nbf > now or iat > now:
        fmt = lambda t: utc(min(max(t, 0), 253402300799)).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")  # noqa: E731
        raise AADError(401, "invalid_client", 700024, f"Client assertion is not within its valid time range. "
                       f"Current time: {fmt(now)}, assertion valid from {fmt(max(nbf, iat))}, expiry time of "
                       f"assertion {fmt(exp)}. Review the documentation at https://docs.microsoft.com/azure/"
                       "active-directory/develop/active-directory-certificate-credentials .")


def token_endpoint(st, method, tenant, body):
    """POST /{tenant}/oauth2/v2.0/token. "Microsoft identity platform and the OAuth 2.0 client
    credentials flow" (/entra/identity-platform/v2-oauth2-client-creds-grant-flow): first case
    (shared secret), third case (federated credential), error response; AADSTS codes from
    "Microsoft Entra authentication and authorization error codes" (.../reference-error-codes)."""
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    one = lambda name: form.get(name, [""])[0]  # noqa: E731
    record = {"grant": "client_assertion" if one("client_assertion") else "client_secret",
              "assertion_sha256": hashlib.sha256(one("client_assertion").encode()).hexdigest()
              if one("client_assertion") else None, "scope": one("scope") or None, "ok": False}
    with st.lock:
        st.token_requests.append(record)
    throttled = st.take_throttle("token")
    if throttled:
        raise AADError(429, "temporarily_unavailable", 90055, "There are too many incoming requests. "
                       "Retry after the time given in Retry-After.", throttled)
    if method != "POST":
        raise AADError(400, "invalid_request", 900561, f"The endpoint only accepts POST, OPTIONS requests. "
                       f"Received a {method} request.")
    if tenant.lower() != TENANT_ID:
        raise AADError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found. Check to make sure you "
                       "have the correct tenant ID and are signing into the correct cloud.")
    for name in ("grant_type", "client_id", "scope"):
        if not one(name):
            raise AADError(400, "invalid_request", 900144,
                           f"The request body must contain the following parameter: '{name}'.")
    if one("grant_type") != "client_credentials":
        raise AADError(400, "unsupported_grant_type", 70003,
                       f"The app requested an unsupported grant type '{one('grant_type')}'.")
    if one("client_id").lower() != CLIENT_ID:
        raise AADError(400, "unauthorized_client", 700016, f"Application with identifier '{one('client_id')}' "
                       f"was not found in the directory '{tenant}'.")
    scope = one("scope")
    if len(scope.split()) != 1:
        raise AADError(400, "invalid_scope", 700022, "The provided value for the input parameter scope is not "
                       f"valid because it contains more than one resource. Scope {scope} is not valid.")
    if not scope.endswith("/.default") or scope == "/.default":
        raise AADError(400, "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid. "
                       "Client credential flows must have a scope value with /.default suffixed to the "
                       "resource identifier (application ID URI).")
    if one("client_assertion"):
        if one("client_assertion_type") != JWT_BEARER:
            raise AADError(400, "invalid_request", 90014,
                           "The required field 'client_assertion_type' is missing or not valid.")
        check_assertion(st, one("client_assertion"))
    elif one("client_secret"):
        if not hmac.compare_digest(one("client_secret").encode(), st.client_secret.encode()):
            raise AADError(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                           "being sent in the request is the client secret value, not the client secret ID, "
                           f"for a secret added to app '{CLIENT_ID}'.")
    else:
        raise AADError(401, "invalid_client", 7000216, "'client_assertion', 'client_secret' or 'request' is "
                       "required for the 'client_credentials' grant type.")
    token, ttl = st.issue_token(scope[: -len("/.default")])
    record["ok"] = True
    return 200, {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}, None


def msi_endpoint(st, method, query, headers):
    """GET /msi/token. "Managed identities for App Service and Azure Functions", REST endpoint
    reference (/azure/app-service/overview-managed-identity#rest-endpoint-reference), 2019-08-01."""
    resource = query.get("resource", [""])[0]
    record = {"grant": "managed_identity", "assertion_sha256": None, "scope": resource or None, "ok": False}
    with st.lock:
        st.token_requests.append(record)
    fail = lambda status, msg, hdrs=None: (  # noqa: E731
        status, {"statusCode": status, "message": msg, "correlationId": str(uuid.uuid4())}, hdrs)
    throttled = st.take_throttle("token")
    if throttled:
        return fail(429, "Too many requests.", throttled)
    if method != "GET":
        return fail(405, f"The requested resource does not support http method '{method}'.")
    if not hmac.compare_digest(headers.get("X-IDENTITY-HEADER", "").encode(), st.identity_header.encode()):
        return fail(401, "Missing or invalid X-IDENTITY-HEADER.")
    if query.get("api-version", [""])[0] != "2019-08-01":
        return fail(400, "Unsupported or missing api-version; this endpoint speaks 2019-08-01.")
    if not resource:
        return fail(400, "Required query variable 'resource' is missing.")
    ids = [k for k in ("client_id", "principal_id", "object_id", "mi_res_id") if k in query]
    if len(ids) > 1 or (ids and (ids[0] != "client_id" or query["client_id"][0].lower() != CLIENT_ID)):
        return fail(400, "No Managed Identity found for specified ClientId/ResourceId/PrincipalId.")
    token, ttl = st.issue_token(resource)
    record["ok"] = True
    return 200, {"access_token": token, "expires_on": str(int(time.time() + ttl)), "resource": resource,
                 "token_type": "Bearer", "client_id": CLIENT_ID}, None


# ---------------------------------------------------------------- Key Vault

def key_ops_for(kty, ops):
    allowed = KEY_OPS[kty.split("-")[0]]
    if ops is None:
        return [o for o in allowed if o not in ("import", "export")]
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise bad("Property 'key_ops' must be an array of strings.")
    for o in ops:
        if o not in allowed:
            raise bad(f"Key operation '{o}' is not valid for key type {kty}.")
    return list(dict.fromkeys(ops))


def object_props(p):
    attrs, tags = p.get("attributes") or {}, p.get("tags")
    if not isinstance(attrs, dict) or not isinstance(tags or {}, dict):
        raise bad("Properties 'attributes' and 'tags' must be objects.")
    if not isinstance(attrs.get("enabled", True), bool):
        raise bad("Property 'attributes.enabled' must be a boolean.")
    for name in ("nbf", "exp"):
        if attrs.get(name) is not None and type(attrs[name]) is not int:
            raise bad(f"Property 'attributes.{name}' must be a unix time.")
    return attrs, tags


def new_version(p):
    """Create Key (/rest/api/keyvault/keys/create-key/create-key): kty, crv, key_size,
    public_exponent, key_ops, attributes, tags."""
    kty, crv, size, exponent = p.get("kty"), None, p.get("key_size"), p.get("public_exponent") or 65537
    if kty not in ("EC", "EC-HSM", "RSA", "RSA-HSM", "oct-HSM"):
        raise bad("Property 'kty' is required." if kty is None else f"The value '{kty}' is not a supported kty.")
    if kty.startswith("EC"):
        crv, size = p.get("crv") or "P-256", None
        if not isinstance(crv, str) or crv not in CURVES:
            raise bad(f"The value '{crv}' is not a supported curve (crv).")
    elif kty.startswith("RSA"):
        size = size or 2048
        if type(size) is not int or size not in (2048, 3072, 4096) or type(exponent) is not int \
                or exponent not in (3, 65537):
            raise bad("RSA keys take key_size 2048, 3072 or 4096 and public_exponent 3 or 65537.")
    else:
        size = size or 256
        if type(size) is not int or size not in (128, 192, 256):
            raise bad("oct-HSM keys take key_size 128, 192 or 256.")
    attrs, tags = object_props(p)
    return Version(kty, crv, size, exponent, key_ops_for(kty, p.get("key_ops")), attrs.get("enabled", True),
                   tags or {}, attrs.get("nbf"), attrs.get("exp"))


def jwk(v, kid):
    """JsonWebKey with the public material only (none for oct-HSM)."""
    j = {"kid": kid, "kty": v.kty, "key_ops": list(v.ops)}
    if v.kty.startswith("RSA"):
        n = v.key.public_key().public_numbers()
        j.update(n=b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                 e=b64u(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big")))
    elif v.kty.startswith("EC"):
        n, width = v.key.public_key().public_numbers(), CURVES[v.crv][1]
        j.update(crv=v.crv, x=b64u(n.x.to_bytes(width, "big")), y=b64u(n.y.to_bytes(width, "big")))
    return j


def attributes(v):
    a = {"enabled": v.enabled, "created": v.created, "updated": v.updated,
         "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90, "exportable": False}
    return {**a, **{k: getattr(v, k) for k in ("nbf", "exp") if getattr(v, k) is not None}}


def item(kid, v):
    return {"kid": kid, "attributes": attributes(v), **({"tags": v.tags} if v.tags else {})}


def bundle(st, entry, v):
    b = {"key": jwk(v, f"{st.base}/keys/{entry['name']}/{v.id}"), "attributes": attributes(v)}
    return {**b, "tags": v.tags} if v.tags else b


def create_key(st, name, p):
    if not isinstance(name, str) or not re.fullmatch(r"[0-9A-Za-z-]{1,127}", name):
        raise bad(f"The request URI contains an invalid name: {name}")
    v = new_version(p)
    with st.lock:
        entry = st.keys.setdefault(name.lower(), {"name": name, "versions": [], "policy": None})
        entry["versions"].append(v)
        return bundle(st, entry, v)


def find(st, name, version=""):
    """The key entry and the version asked for ("" = the latest)."""
    with st.lock:
        entry = st.keys.get(name.lower())
        if entry is None:
            raise KVError(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault. "
                          "If you recently deleted this key you may be able to recover it using the correct "
                          "recovery command. For help resolving this issue, please see "
                          "https://go.microsoft.com/fwlink/?linkid=2125182")
        for v in entry["versions"] if version else entry["versions"][-1:]:
            if not version or v.id == version.lower():
                return entry, v
        raise KVError(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found in this key vault.")


def usable(v, op):
    """A disabled version: 403 KeyDisabled; an operation not in key_ops: 403 KeyOperationForbidden."""
    if not v.enabled:
        raise KVError(403, "Forbidden", f"Operation {op} is not allowed on a disabled key.", "KeyDisabled")
    perm = OP_PERMISSION.get(op)
    if perm and perm not in v.ops:
        raise KVError(403, "Forbidden", f"Operation {perm} is not permitted on this key.", "KeyOperationForbidden")


def field(p, name, b64=True, required=True):
    if p.get(name) is None:
        if required:
            raise bad(f"Property '{name}' is required.")
        return None
    if not b64:
        if not isinstance(p[name], str):
            raise bad(f"Property '{name}' must be a string.")
        return p[name]
    try:
        return unb64u(p[name])
    except ValueError:
        raise bad(f"Content of '{name}' is not base64url.")


def sign_verify(v, op, p):
    """Sign (/rest/api/keyvault/keys/sign/sign), Verify (.../keys/verify/verify). The value is a
    digest of the algorithm's hash; EC signatures are raw r||s, each the curve's byte width."""
    alg, digest = field(p, "alg", b64=False), field(p, "value" if op == "sign" else "digest")
    sig = None if op == "sign" else field(p, "value")
    incompatible = bad(f"Key and signing algorithm are incompatible: {alg} on a {v.crv or v.kty} key.")
    if v.kty.startswith("EC"):
        if EC_ALGS.get(alg, ("",))[0] != v.crv:
            raise incompatible
        h, width = EC_ALGS[alg][1](), CURVES[v.crv][1]
    elif v.kty.startswith("RSA") and alg in RSA_SIGN:
        h = RSA_SIGN[alg]()
        pad = padding.PSS(padding.MGF1(RSA_SIGN[alg]()), h.digest_size) if alg[0] == "P" else padding.PKCS1v15()
    else:
        raise incompatible
    if len(digest) != h.digest_size:
        raise bad(f"Invalid digest length for {alg}: expected {h.digest_size} bytes, got {len(digest)}.")
    if op == "sign":
        if v.kty.startswith("EC"):
            r, s = decode_dss_signature(v.key.sign(digest, ec.ECDSA(Prehashed(h))))
            return {"value": b64u(r.to_bytes(width, "big") + s.to_bytes(width, "big"))}
        return {"value": b64u(v.key.sign(digest, pad, Prehashed(h)))}
    try:
        if v.kty.startswith("EC"):
            if len(sig) != 2 * width:
                raise InvalidSignature
            der = encode_dss_signature(int.from_bytes(sig[:width], "big"), int.from_bytes(sig[width:], "big"))
            v.key.public_key().verify(der, digest, ec.ECDSA(Prehashed(h)))
        else:
            v.key.public_key().verify(sig, digest, pad, Prehashed(h))
        return {"value": True}
    except (InvalidSignature, ValueError):
        return {"value": False}


def crypt(v, op, p):
    """Encrypt, Decrypt (/rest/api/keyvault/keys/encrypt/encrypt, .../decrypt/decrypt), Wrap Key,
    Unwrap Key (.../wrap-key/wrap-key, .../unwrap-key/unwrap-key). AES-GCM: the service makes the
    12-byte IV and answers iv and tag; AES-KW is RFC 3394."""
    alg, value, seal = field(p, "alg", b64=False), field(p, "value"), op in ("encrypt", "wrapkey")
    bits = len(v.key) * 8 if isinstance(v.key, bytes) else 0
    want = (RSA_ENC if v.kty.startswith("RSA") else
            () if v.kty.startswith("EC") else [f"A{bits}{'GCM' if op.endswith('crypt') else 'KW'}"])
    if alg not in want:
        raise bad(f"Key and encryption algorithm are incompatible: {alg} on a {v.kty} key for {op}.")
    if v.kty.startswith("RSA"):
        h = RSA_ENC[alg]
        pad = padding.OAEP(padding.MGF1(h()), h(), None) if h else padding.PKCS1v15()
        try:
            return {"value": b64u(v.key.public_key().encrypt(value, pad) if seal else v.key.decrypt(value, pad))}
        except ValueError:
            raise bad(f"The value is too long for {alg} with a {v.size}-bit key." if seal else
                      f"Error occurred while decoding {'OAEP' if h else 'PKCS1'} padding.")
    if alg.endswith("KW"):
        try:
            return {"value": b64u(aes_key_wrap(v.key, value) if seal else aes_key_unwrap(v.key, value))}
        except (ValueError, InvalidUnwrap):
            raise bad("The key could not be wrapped or unwrapped: invalid length or integrity check failed.")
    aad = field(p, "aad", required=False)
    if seal:
        if p.get("iv") is not None:
            raise bad("Property 'iv' must not be given: the service generates the IV for AES-GCM.")
        iv = secrets.token_bytes(12)
        ct = AESGCM(v.key).encrypt(iv, value, aad)
        out = {"value": b64u(ct[:-16]), "iv": b64u(iv), "tag": b64u(ct[-16:])}
    else:
        iv, tag = field(p, "iv"), field(p, "tag")
        if len(iv) != 12 or len(tag) != 16:
            raise bad("Properties 'iv' (12 bytes) and 'tag' (16 bytes) have the wrong length.")
        try:
            out = {"value": b64u(AESGCM(v.key).decrypt(iv, value + tag, aad))}
        except InvalidTag:
            raise bad("Decryption failed: the authentication tag does not match.")
    return {**out, "aad": b64u(aad)} if aad is not None else out


def page(items, query, link):
    """List paging: maxresults (1..25, default 25) and an absolute nextLink (null at the end)."""
    try:
        size = int(query.get("maxresults", ["25"])[0])
        skip = int(unb64u(query.get("$skiptoken", [b64u(b"0")])[0]).decode())
    except (ValueError, UnicodeDecodeError):
        raise bad("Invalid maxresults or $skiptoken.")
    if not 1 <= size <= 25 or skip < 0:
        raise bad("maxresults must be between 1 and 25.")
    nxt = (f"{link}?api-version={quote(query['api-version'][0])}&$skiptoken={b64u(str(skip + size).encode())}"
           f"&maxresults={size}") if skip + size < len(items) else None
    return {"value": items[skip: skip + size], "nextLink": nxt}


DURATION = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def rotation_policy(st, entry, method, p):
    """Get/Update Key Rotation Policy (/rest/api/keyvault/keys/get-key-rotation-policy,
    .../update-key-rotation-policy). A policy never set reads as the service's default."""
    if method == "PUT":
        actions, attrs = p.get("lifetimeActions", []), p.get("attributes") or {}
        if not isinstance(actions, list) or not isinstance(attrs, dict):
            raise bad("Properties 'lifetimeActions' (array) and 'attributes' (object) are malformed.")
        durations = [attrs.get("expiryTime")]
        for a in actions:
            try:
                kind, trig = a["action"]["type"], a["trigger"]
                durations += [trig.get("timeAfterCreate"), trig.get("timeBeforeExpiry")]
            except (KeyError, TypeError, AttributeError):
                raise bad("Each lifetime action needs a 'trigger' and an 'action' with a 'type'.")
            if str(kind).lower() not in ("rotate", "notify"):
                raise bad(f"Invalid lifetime action type: {kind}.")
        for dur in durations:
            if dur is not None and (not isinstance(dur, str) or dur in ("P", "PT") or not DURATION.fullmatch(dur)):
                raise bad(f"Invalid ISO 8601 duration: {dur}.")
        t = int(time.time())
        created = ((entry["policy"] or {}).get("attributes") or {}).get("created", t)
        expiry = {"expiryTime": attrs["expiryTime"]} if attrs.get("expiryTime") else {}
        entry["policy"] = {"id": f"{st.base}/keys/{entry['name']}/rotationpolicy", "lifetimeActions": actions,
                           "attributes": {**expiry, "created": created, "updated": t}}
    return entry["policy"] or {"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"},
                                                    "action": {"type": "Notify"}}], "attributes": {}}


def rotate(st, entry):
    """Rotate Key (/rest/api/keyvault/keys/rotate-key): a new latest version like the current one;
    the policy's expiryTime, when set, gives it an exp."""
    t = entry["versions"][-1]
    v = Version(t.kty, t.crv, t.size, t.exponent, list(t.ops), True, dict(t.tags), None, None)
    ttl = ((entry["policy"] or {}).get("attributes") or {}).get("expiryTime")
    if ttl:
        y, mo, d, h, mi, s = (int(x or 0) for x in DURATION.fullmatch(ttl).groups())
        v.exp = v.created + (y * 365 + mo * 30 + d) * 86400 + h * 3600 + mi * 60 + s
    with st.lock:
        entry["versions"].append(v)
        return bundle(st, entry, v)


def update(st, entry, v, p):
    """Update Key (/rest/api/keyvault/keys/update-key/update-key): attributes, key_ops, tags."""
    attrs, tags = object_props(p)
    ops = key_ops_for(v.kty, p["key_ops"]) if p.get("key_ops") is not None else v.ops
    with st.lock:
        v.enabled, v.ops, v.updated = attrs.get("enabled", v.enabled), ops, int(time.time())
        v.nbf, v.exp = attrs.get("nbf", v.nbf), attrs.get("exp", v.exp)
        v.tags = v.tags if tags is None else tags
        return bundle(st, entry, v)


def authenticate(st, headers):
    """Key Vault's "Authentication, requests and responses" (/azure/key-vault/general/authentication-
    requests-and-responses): no or a refused token → 401 with the WWW-Authenticate challenge, whose resource
    is the vault host without its first label (myvault.vault.azure.net → https://vault.azure.net)."""
    host = headers.get("Host", "127.0.0.1").strip()
    host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    resource = "https://" + (host.split(".", 1)[1] if "." in host else host)
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    with st.lock:
        rec = st.tokens.get(token.strip()) or {"revoked": True}
        message = ("AKV10000: Request is missing a Bearer or PoP token." if scheme.lower() != "bearer"
                   or not token.strip() else
                   "[AggregatedAuthenticationFailure] Error validating token: 'S2S17001'." if rec["revoked"] else
                   "[TokenExpired] Error validating token: 'S2S12086'." if rec["exp"] <= time.time() else
                   f"AKV10022: Invalid audience. Expected {resource}, found: {rec['aud']}."
                   if rec["aud"].rstrip("/") != resource else None)
        if message:
            st.unauthorized += 1
            raise KVError(401, "Unauthorized", message, headers={
                "WWW-Authenticate": f'Bearer authorization="{st.base}/{TENANT_ID}", resource="{resource}"'})


def keyvault(st, method, path, query, body, headers):
    """The keys API (/rest/api/keyvault/keys). The SDK sends "/keys/{name}//{op}" and "/keys/{name}/"
    for "the latest version"; "/keys/{name}/{op}" (as the REST docs write it) means the same."""
    authenticate(st, headers)
    if not query.get("api-version", [""])[0]:
        raise bad("The 'api-version' query parameter is missing.")
    throttled = st.take_throttle("keyvault")
    if throttled:
        raise KVError(429, "Throttled", "Request was not processed because too many requests were received. "
                      "Reason: VaultRequestTypeLimitReached", headers=throttled)

    def params():
        try:
            p = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise bad("The request body is missing or not valid JSON.")
        if not isinstance(p, dict):
            raise bad("The request body must be a JSON object.")
        return p

    def versions(entry):
        with st.lock:
            items = [item(f"{st.base}/keys/{entry['name']}/{v.id}", v) for v in entry["versions"]]
        return page(items, query, f"{st.base}/keys/{entry['name']}/versions")

    def get_or_update(name, version):
        entry, v = find(st, name, version)
        if method == "PATCH":
            return update(st, entry, v, params())
        usable(v, "get")
        return bundle(st, entry, v)

    def route():  # (methods, the op counted in stats, what answers)
        segs = path.split("/")[1:]
        n, name, sub = len(segs), segs[1] if len(segs) > 1 else "", segs[2] if len(segs) > 2 else ""
        if not name and n <= 2:                                     # GET /keys: Get Keys
            with st.lock:
                items = [item(f"{st.base}/keys/{e['name']}", e["versions"][-1]) for _, e in sorted(st.keys.items())]
            return ("GET",), "list", lambda: page(items, query, f"{st.base}/keys")
        if n == 3 and sub == "create":                              # Create Key
            return ("POST",), "create", lambda: create_key(st, name, params())
        if n == 3 and sub == "rotate":                              # Rotate Key
            return ("POST",), "rotate", lambda: rotate(st, find(st, name)[0])
        if n == 3 and sub == "versions":                            # Get Key Versions
            return ("GET",), "versions", lambda: versions(find(st, name)[0])
        if n == 3 and sub == "rotationpolicy":                      # Get/Update Key Rotation Policy
            return ("GET", "PUT"), "rotationpolicy", lambda: rotation_policy(
                st, find(st, name)[0], method, params() if method == "PUT" else {})
        if n == 3 and sub in OP_PERMISSION:                         # /keys/{name}/{op}: the latest
            return ("POST",), sub, lambda: operation(st, name, "", sub, params())
        if n in (2, 3):                                             # Get Key, Update Key ("" = the latest)
            return ("GET", "PATCH"), "update" if method == "PATCH" else "get", lambda: get_or_update(name, sub)
        if n == 4 and segs[3] in OP_PERMISSION:                     # /keys/{name}/{version or ""}/{op}
            return ("POST",), segs[3], lambda: operation(st, name, segs[2], segs[3], params())
        raise KVError(404, "NotFound", "The requested resource was not found.")

    methods, op, run = route()
    if method not in methods:
        raise KVError(405, "MethodNotAllowed", f"The requested resource does not support http method '{method}'.")
    with st.lock:
        st.kv_requests[op] += 1  # whatever the answer: tests count the calls a backend makes
    return 200, run(), None


def operation(st, name, version, op, p):
    entry, v = find(st, name, version)
    usable(v, op)
    out = sign_verify(v, op, p) if op in ("sign", "verify") else crypt(v, op, p)
    return out if op == "verify" else {"kid": f"{st.base}/keys/{entry['name']}/{v.id}", **out}


# -------------------------------------------------------------------- admin

def admin(st, method, path, body):
    """The test-only API under /_fake/ (no auth; see README)."""
    try:
        p = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        p = None
    if not isinstance(p, dict):
        raise KVError(400, "BadRequest", "The body must be a JSON object.")

    def integer(name, default):
        if type(p.get(name, default)) is not int:
            raise KVError(400, "BadRequest", f"'{name}' must be an integer.")
        return p.get(name, default)
    m = re.fullmatch(r"/_fake/keys/([^/]+)/([^/]+)/enabled", path)
    if method == "POST" and path == "/_fake/keys":
        return create_key(st, p.get("name"), p)
    if method == "POST" and m:
        if not isinstance(p.get("enabled"), bool):
            raise KVError(400, "BadRequest", "'enabled' must be a boolean.")
        entry, v = find(st, m.group(1), "" if m.group(2) == "latest" else m.group(2))
        with st.lock:
            v.enabled, v.updated = p["enabled"], int(time.time())
            return bundle(st, entry, v)
    if method == "POST" and path == "/_fake/federated-token":
        token = st.mint_federated(integer("ttl", 3600), p.get("aud"), p.get("sub"))
        if p.get("write"):
            write_file(os.path.join(st.dir, "federated-token"), token, 0o600)
        return {"token": token}
    if method == "POST" and path == "/_fake/revoke":
        with st.lock:
            for rec in st.tokens.values():
                rec["revoked"] = True
            return {"revoked": len(st.tokens)}
    if method == "POST" and path == "/_fake/throttle":
        count, retry, target = integer("count", 1), integer("retry_after", 1), p.get("target", "keyvault")
        if target not in st.throttles or count < 0 or retry < 0:
            raise KVError(400, "BadRequest", "Want count, retry_after >= 0 and target keyvault or token.")
        with st.lock:
            st.throttles[target] = [count, retry]
        return {"target": target, "count": count, "retry_after": retry}
    if path == "/_fake/settings" and method in ("GET", "POST"):
        ttl = integer("access_token_ttl", st.access_token_ttl)
        with st.lock:
            st.access_token_ttl = ttl
            st.federated_subject = str(p.get("federated_subject", st.federated_subject))
            return {"access_token_ttl": st.access_token_ttl, "federated_subject": st.federated_subject}
    if method == "GET" and path == "/_fake/stats":
        with st.lock:
            return {"token_requests": [dict(r) for r in st.token_requests], "keyvault_requests": dict(st.kv_requests),
                    "unauthorized": st.unauthorized, "throttled": st.throttled, "traceparents": list(st.traceparents)}
    raise KVError(404, "NotFound", f"No admin route {method} {path}.")


# --------------------------------------------------------------------- main

def record_traceparent(st, headers):
    """Key Vault takes the W3C trace context (Azure SDKs send `traceparent`)."""
    if headers.get("traceparent"):
        with st.lock:
            st.traceparents = (st.traceparents + [headers["traceparent"]])[-100:]


class Handler(QuietHandler):
    server_version = "fake-azure"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(64).split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                if size + sum(map(len, chunks)) > MAX_BODY:
                    raise ValueError
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise ValueError
        return self.rfile.read(length)

    def send_json(self, status, obj, headers=None):
        data = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(data)),
                     "Cache-Control": "no-store", "x-ms-request-id": str(uuid.uuid4()), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def dispatch(self):
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self.send_json(413, {"error": {"code": "BadParameter", "message": "Malformed or too large body."}})
        u, st, method = urlsplit(self.path), STATE, self.command
        query = parse_qs(u.query, keep_blank_values=True)
        correlation = self.headers.get("client-request-id") or str(uuid.uuid4())
        tenant = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", u.path)
        try:
            if u.path.startswith("/_fake/"):
                answer = (200, admin(st, method, u.path, body), None)
            elif u.path.lower() == "/msi/token":
                answer = msi_endpoint(st, method, query, self.headers)
            elif tenant:
                answer = token_endpoint(st, method, tenant.group(1), body)
            elif u.path == "/keys" or u.path.startswith("/keys/"):
                record_traceparent(st, self.headers)
                answer = keyvault(st, method, u.path, query, body, self.headers)
            else:
                raise KVError(404, "NotFound", "The requested resource was not found.")
            self.send_json(*answer)
        except KVError as e:
            self.send_json(e.status, e.body(), e.headers)
        except AADError as e:
            self.send_json(e.status, e.body(correlation), e.headers)
        except Exception:  # our own bug: a 500 with an error body, the traceback to our log only
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, {"error": {"code": "InternalServerError", "message": "The fake failed (see its log)."}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch


class Server(QuietServer):
    def __init__(self, addr, ctx):
        self.ctx = ctx
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        request.settimeout(30)  # the TLS handshake runs here, in the connection's own thread
        try:
            conn = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            Handler(conn, client_address, self)
        finally:
            conn.close()


def main():
    global STATE
    args = parse_args(__doc__.splitlines()[0], "where to write ca.pem, env, config.yaml, url, ...")
    d = args.dir
    server = Server(("127.0.0.1", args.port), make_tls(d))
    base = f"https://127.0.0.1:{server.server_address[1]}"
    st = STATE = State(d, base)
    create_key(st, "azure-sign", {"kty": "EC", "crv": "P-256"})
    create_key(st, "azure-rsa", {"kty": "RSA", "key_size": 2048})
    j, q = os.path.join, shlex.quote
    write_file(j(d, "federated-token"), st.mint_federated(3600), 0o600)
    write_file(j(d, "client-secret"), st.client_secret, 0o600)
    write_file(j(d, "identity-header"), st.identity_header, 0o600)
    write_file(j(d, "env"), f"AZURE_TENANT_ID={TENANT_ID}\nAZURE_CLIENT_ID={CLIENT_ID}\n"
               f"AZURE_FEDERATED_TOKEN_FILE={q(j(d, 'federated-token'))}\nAZURE_AUTHORITY_HOST={base}/\n"
               f"SSL_CERT_FILE={q(j(d, 'ca.pem'))}\n")
    write_file(j(d, "env.msi"), f"IDENTITY_ENDPOINT={base}/msi/token\nIDENTITY_HEADER={st.identity_header}\n"
               f"AZURE_CLIENT_ID={CLIENT_ID}\nSSL_CERT_FILE={q(j(d, 'ca.pem'))}\n", 0o600)
    write_file(j(d, "config.yaml"), (
        "# Written by tests/fakes/azure_keyvault.py (a contract fake, not Azure).\n"
        f"listen: {{ socket: {json.dumps(j(d, 'kms.sock'))} }}\n"
        f"backends:\n  azure: {{ type: azure, vault_url: \"{base}\" }}\n"
        "keys:\n  azure-sign: { backend: azure, key: azure-sign }\n"
        "  azure-rsa: { backend: azure, key: azure-rsa, algorithm: rsa-oaep-2048-sha256 }\n"
        f"callers:\n  - {{ uids: [{args.uid}], keys: [\"*\"], ops: [\"*\"] }}\n"))
    write_file(j(d, "url"), base + "\n")  # last: harnesses wait for this file
    serve(server, "fake-azure", f"contract fake of Azure Key Vault + Entra ID on {base} (dir {d})")


if __name__ == "__main__":
    main()

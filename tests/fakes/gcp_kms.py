#!/usr/bin/env python3
"""Contract fake of Google Cloud KMS (REST v1) and the Google credential services.

Cloud KMS has no local server. This fake, written from Google's public REST
reference (see tests/fakes/README.md), is what the kms-sidecar tests and
`make fake-gcp` run the sidecar's GCP backend against. It is NOT Google: keys
live in memory, access tokens are opaque strings only this process knows.

    python3 tests/fakes/gcp_kms.py --dir DIR [--port N] [--uid UID]

Serves plain HTTP on 127.0.0.1: Cloud KMS (/v1/projects/...), the Security Token
Service (/v1/token), IAM Credentials generateAccessToken and the metadata server
(/computeMetadata/v1/...). Writes DIR/{subject-token, external-account.json,
external-account-direct.json, env, env.direct, env.mds, config.yaml} and, last,
DIR/url. Standard library + `cryptography` only (and fakeserver.py beside it).
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import struct
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fakeserver import QuietHandler, QuietServer, b64u, parse_args, serve, write_file

PROJECT, PROJECT_NUMBER = "fake-project", "123456789"
RING_NAME = f"projects/{PROJECT}/locations/global/keyRings/fake-ring"
AUDIENCE = (f"//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
            "workloadIdentityPools/fake-pool/providers/fake-provider")
SA_EMAIL = f"kms-sidecar@{PROJECT}.iam.gserviceaccount.com"
MDS_EMAIL = f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
K8S_ISSUER, K8S_SUBJECT = "https://kubernetes.default.svc.cluster.local", "system:serviceaccount:default:kms-sidecar"
JWT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
KMS_SCOPES = (CLOUD_PLATFORM, "https://www.googleapis.com/auth/cloudkms")
IAM_SCOPES = (CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam")
DESTROY_DELAY = 30 * 86400          # destroyScheduledDuration default: 30 days
MAX_BODY, MAX_DATA = 1 << 20, 64 * 1024
AUTH_HELP = ("Expected OAuth 2 access token, login cookie or other valid authentication credential. "
             "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
STATE = None  # the one State, set in main()

# ------------------------------------------------------------------- CRC32C
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): what the *Crc32c fields carry.

CRC_TABLE = []
for _i in range(256):
    for _ in range(8):
        _i = (_i >> 1) ^ (0x82F63B78 if _i & 1 else 0)
    CRC_TABLE.append(_i)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283 and crc32c(b"") == 0

# ----------------------------------------------------------- enums, formats
# proto3 JSON: enums by name, or by number when the client asks `$alt=json;enum-encoding=int`
# (google-cloud-kms-v1 always does, and sends numbers in request bodies too).

ALG_NUMBERS = {"CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED": 0, "GOOGLE_SYMMETRIC_ENCRYPTION": 1,
               "RSA_SIGN_PSS_2048_SHA256": 2, "RSA_SIGN_PSS_3072_SHA256": 3, "RSA_SIGN_PSS_4096_SHA256": 4,
               "RSA_SIGN_PSS_4096_SHA512": 15, "RSA_SIGN_PKCS1_2048_SHA256": 5, "RSA_SIGN_PKCS1_3072_SHA256": 6,
               "RSA_SIGN_PKCS1_4096_SHA256": 7, "RSA_SIGN_PKCS1_4096_SHA512": 16,
               "RSA_DECRYPT_OAEP_2048_SHA256": 8, "RSA_DECRYPT_OAEP_3072_SHA256": 9,
               "RSA_DECRYPT_OAEP_4096_SHA256": 10, "RSA_DECRYPT_OAEP_4096_SHA512": 17,
               "RSA_DECRYPT_OAEP_2048_SHA1": 37, "RSA_DECRYPT_OAEP_3072_SHA1": 38, "RSA_DECRYPT_OAEP_4096_SHA1": 39,
               "EC_SIGN_P256_SHA256": 12, "EC_SIGN_P384_SHA384": 13, "EC_SIGN_SECP256K1_SHA256": 31,
               "EC_SIGN_ED25519": 40,
               "HMAC_SHA256": 32, "HMAC_SHA1": 33, "HMAC_SHA384": 34, "HMAC_SHA512": 35, "HMAC_SHA224": 36}
ENUMS = {"algorithm": ALG_NUMBERS,
         "purpose": {"CRYPTO_KEY_PURPOSE_UNSPECIFIED": 0, "ENCRYPT_DECRYPT": 1, "ASYMMETRIC_SIGN": 5,
                     "ASYMMETRIC_DECRYPT": 6, "RAW_ENCRYPT_DECRYPT": 7, "MAC": 9, "KEY_ENCAPSULATION": 10},
         "protectionLevel": {"PROTECTION_LEVEL_UNSPECIFIED": 0, "SOFTWARE": 1, "HSM": 2, "EXTERNAL": 3,
                             "EXTERNAL_VPC": 4},
         "state": {"CRYPTO_KEY_VERSION_STATE_UNSPECIFIED": 0, "PENDING_GENERATION": 5, "ENABLED": 1,
                   "DISABLED": 2, "DESTROYED": 3, "DESTROY_SCHEDULED": 4},
         "publicKeyFormat": {"PUBLIC_KEY_FORMAT_UNSPECIFIED": 0, "PEM": 1, "DER": 2, "NIST_PQC": 3,
                             "XWING_RAW_BYTES": 4}}
HASHES = {"SHA1": hashes.SHA1, "SHA224": hashes.SHA224, "SHA256": hashes.SHA256, "SHA384": hashes.SHA384,
          "SHA512": hashes.SHA512}
CURVES = {"P256": ec.SECP256R1, "P384": ec.SECP384R1, "SECP256K1": ec.SECP256K1}
ALGS = {"GOOGLE_SYMMETRIC_ENCRYPTION": ("ENCRYPT_DECRYPT", "aes", None, None),  # name -> (purpose, kind, size, hash)
        "EC_SIGN_ED25519": ("ASYMMETRIC_SIGN", "ed25519", None, None)}
for _name in ALG_NUMBERS:
    _m = re.fullmatch(r"(?:RSA_(SIGN_PSS|SIGN_PKCS1|DECRYPT_OAEP)_(\d+)|EC_SIGN_(\w+)|HMAC)_(SHA\d+)", _name)
    if _name in ALGS:
        continue
    if _m and _m.group(1):
        ALGS[_name] = ("ASYMMETRIC_DECRYPT" if _m.group(1) == "DECRYPT_OAEP" else "ASYMMETRIC_SIGN",
                       _m.group(1).split("_")[-1].lower(), int(_m.group(2)), _m.group(4))
    elif _m:
        ALGS[_name] = ("ASYMMETRIC_SIGN", "ec", _m.group(3), _m.group(4)) if _m.group(3) else \
            ("MAC", "hmac", None, _m.group(4))


def enum_value(field, value):
    """A request enum given by name or by number -> its name (None if unknown)."""
    table = ENUMS[field]
    if isinstance(value, str):
        return value if value in table else None
    return next((k for k, n in table.items() if n == value), None) if type(value) is int else None


def encode_enums(obj, as_int):
    if isinstance(obj, list):
        return [encode_enums(x, as_int) for x in obj]
    if not isinstance(obj, dict):
        return obj
    return {k: ENUMS[k].get(v, v) if as_int and k in ENUMS and isinstance(v, str) else encode_enums(v, as_int)
            for k, v in obj.items()}


def snake(name):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text):
    """proto3 JSON bytes: standard or URL-safe base64, padding optional; ValueError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9+/_-]*={0,2}", text):
        raise ValueError
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(text) % 4 == 1:
        raise ValueError
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def ts(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    dt = datetime.datetime.fromisoformat(m.group(1) + (m.group(3) if m.group(3) != "Z" else "+00:00"))
    return dt.timestamp() + (int(m.group(2).ljust(9, "0")) / 1e9 if m.group(2) else 0)


def parse_duration(text):
    m = re.fullmatch(r"(\d+)(\.\d{1,9})?s", text)
    return int(m.group(1)) + (float(m.group(2)) if m.group(2) else 0)



# ------------------------------------------------------------------- errors


class ApiError(Exception):
    """A google.rpc.Status answer {"error":{"code","message","status"[,"details"]}} ("Errors", AIP-193,
    cloud.google.com/apis/design/errors: HTTP mapping and the ErrorInfo/BadRequest/PreconditionFailure details)."""

    def __init__(self, code, status, message, details=None, headers=None):
        super().__init__(message)
        self.code, self.status, self.message, self.details, self.headers = code, status, message, details, headers

    def body(self):
        err = {"code": self.code, "message": self.message, "status": self.status}
        return {"error": {**err, "details": self.details} if self.details else err}


class StsError(Exception):
    """An OAuth 2.0 error of the Security Token Service (RFC 6749 §5.2): {"error","error_description"}."""

    def __init__(self, error, description):
        super().__init__(description)
        self.error, self.description = error, description


def invalid(message, field=None):
    details = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}]}] if field else None
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def precondition(message, kind, subject):
    return ApiError(400, "FAILED_PRECONDITION", message, [{
        "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
        "violations": [{"type": kind, "subject": subject, "description": message}]}])


def not_found(name):
    return ApiError(404, "NOT_FOUND", f"{name} not found.")


def error_info(reason, service, method=None):
    return [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
             "metadata": {"service": service, **({"method": method} if method else {})}}]


def quota(metric, service, method=None):
    return ApiError(429, "RESOURCE_EXHAUSTED", f"Quota exceeded for quota metric '{metric}' and limit '{metric} per "
                    f"minute' of service '{service}' for consumer 'project_number:{PROJECT_NUMBER}'.",
                    error_info("RATE_LIMIT_EXCEEDED", service, method))


def field(p, name, parse, type_name, path=None):
    """A typed request field (None if absent); 400 INVALID_ARGUMENT in the transcoder's words if malformed."""
    if name not in p:
        return None
    try:
        return parse(p[name])
    except (ValueError, TypeError, AttributeError):
        path, shown = path or snake(name), str(p[name])[:24]
        raise invalid(f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{shown}\""
                      if type_name == "TYPE_BYTES" else f"Invalid value at '{path}' ({type_name}), \"{shown}\"", path)

# -------------------------------------------------------------------- state


class Version:
    """One CryptoKeyVersion; its material never leaves this process."""

    def __init__(self, number, algorithm, protection):
        self.number, self.algorithm, self.protection = number, algorithm, protection
        self.state, self.created, self.destroy_time, self.destroy_event = "ENABLED", time.time(), None, None
        _, kind, size, h = ALGS[algorithm]
        self.material = (AESGCM.generate_key(256) if kind == "aes" else secrets.token_bytes(HASHES[h].digest_size)
                         if kind == "hmac" else ec.generate_private_key(CURVES[size]()) if kind == "ec" else
                         ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else
                         rsa.generate_private_key(65537, size))


class CryptoKey:
    def __init__(self, name, purpose, algorithm, protection, rotation_period, next_rotation):
        self.name, self.purpose, self.algorithm, self.protection = name, purpose, algorithm, protection
        self.rotation_period, self.next_rotation = rotation_period, next_rotation
        self.created, self.tag, self.versions, self.primary = time.time(), secrets.token_bytes(16), {}, None

    def add_version(self):
        v = Version(max(self.versions, default=0) + 1, self.algorithm, self.protection)
        self.versions[v.number] = v
        return v

    def vname(self, v):
        return f"{self.name}/cryptoKeyVersions/{v.number}"


class State:
    def __init__(self, d):
        self.dir, self.lock, self.keys = d, threading.RLock(), {}   # one key ring: RING_NAME
        self.tokens = {}        # access token -> {"kind", "exp", "scopes", "revoked"}
        self.ttl = {"sts_token_ttl": 3600, "impersonated_token_ttl": 3600, "metadata_token_ttl": 3600}
        self.throttles = dict.fromkeys(("kms", "sts", "iam", "metadata"), 0)
        self.corrupt = {}       # answer field -> how many more answers get it wrong
        self.sts_requests, self.impersonation_requests = [], []
        self.metadata_requests = self.unauthenticated = self.throttled = 0
        self.kms_requests = dict.fromkeys((r for r, _ in KMS_ROUTES.values()), 0)
        self.traceparents = []  # the W3C `traceparent` of the last Cloud KMS calls that sent one
        self.issuer_key = rsa.generate_private_key(65537, 2048)   # stands for the cluster's SA token issuer
        self.issuer_kid = b64u(hashlib.sha256(self.issuer_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()[:16])

    def take_throttle(self, target):
        with self.lock:
            if self.throttles[target] <= 0:
                return False
            self.throttles[target] -= 1
            self.throttled += 1
            return True

    def issue_token(self, kind, scopes, ttl):
        token = "ya29.fake-" + secrets.token_urlsafe(48)
        with self.lock:
            self.tokens[token] = {"kind": kind, "exp": time.time() + ttl, "scopes": list(scopes), "revoked": False}
        return token

    def mint_subject_token(self, ttl=3600, aud=None):
        """A projected Kubernetes service-account token: an RS256 JWT signed by the fake issuer key."""
        now = int(time.time())
        iat = now if ttl > 0 else now + ttl - 3600
        claims = {"aud": [aud or AUDIENCE], "exp": now + ttl, "iat": iat, "nbf": iat, "iss": K8S_ISSUER,
                  "sub": K8S_SUBJECT, "kubernetes.io": {"namespace": "default",
                                                        "serviceaccount": {"name": "kms-sidecar"}}}
        signing_input = b64u(json.dumps({"alg": "RS256", "kid": self.issuer_kid, "typ": "JWT"}).encode()) + \
            "." + b64u(json.dumps(claims).encode())
        signature = self.issuer_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64u(signature)

    def key(self, ring, key_id):
        """The CryptoKey, after any automatic rotation that fell due ("Key rotation", /kms/docs/key-rotation:
        a new primary version, nextRotationTime advanced by rotationPeriod)."""
        with self.lock:
            k = self.keys.get(key_id) if ring == RING_NAME else None
            if k is None:
                raise not_found(f"{ring}/cryptoKeys/{key_id}")
            while k.purpose == "ENCRYPT_DECRYPT" and k.next_rotation is not None and k.next_rotation <= time.time():
                k.primary = k.add_version().number
                k.next_rotation = k.next_rotation + k.rotation_period if k.rotation_period else None
            return k

    def version(self, k, number):
        with self.lock:
            v = k.versions.get(int(number)) if re.fullmatch(r"[1-9]\d{0,8}", number or "") else None
            if v is None:
                raise not_found(f"{k.name}/cryptoKeyVersions/{number}")
            return v

# -------------------------------------------------------------- credentials


def sts_token(st, headers, body):
    """POST /v1/token. Security Token Service API v1, "Method: token"
    (cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token), RFC 8693: a workload identity
    pool provider's subject token (here: a Kubernetes SA token, OIDC) for a federated access token."""
    if "json" in headers.get("Content-Type", ""):
        try:
            form = {k: str(v) for k, v in json.loads(body).items()}
        except (ValueError, AttributeError, UnicodeDecodeError):
            form = {}
    else:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    subject = form.get("subject_token", "")
    record = {"subject_sha256": hashlib.sha256(subject.encode()).hexdigest() if subject else None,
              "scope": form.get("scope"), "ok": False}
    with st.lock:
        st.sts_requests.append(record)
    if st.take_throttle("sts"):
        raise quota("Token exchange requests", "sts.googleapis.com")
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
        raise StsError("unsupported_grant_type", f"Unsupported grant type: \"{form.get('grant_type', '')}\".")
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise StsError("invalid_request", "Invalid value for \"requested_token_type\".")
    if form.get("subject_token_type") not in JWT_TYPES:
        raise StsError("invalid_request", "Invalid value for \"subject_token_type\": the provider is OIDC.")
    audience = form.get("audience", "")
    if not re.fullmatch(r"(//iam\.googleapis\.com/|https://iam\.googleapis\.com/)?projects/[^/]+/locations/global/"
                        r"workloadIdentityPools/[^/]+/providers/[^/]+", audience):
        raise StsError("invalid_request", "Invalid value for \"audience\". This value should be the full resource "
                       "name of the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/"
                       "TopLevel/token for the list of possible formats.")
    if audience.split("iam.googleapis.com")[-1].lstrip("/") != AUDIENCE.split("iam.googleapis.com/")[1]:
        raise StsError("invalid_target", "The target service indicated by the \"audience\" parameters is invalid. "
                       "This might either be because the pool or provider is disabled or deleted or because it "
                       "doesn't exist.")
    if not subject:
        raise StsError("invalid_request", "Missing required parameter: \"subject_token\".")
    try:
        h64, c64, s64 = subject.split(".")
        header, claims = json.loads(unb64(h64)), json.loads(unb64(c64))
        if header.get("alg") != "RS256":
            raise InvalidSignature
        st.issuer_key.public_key().verify(unb64(s64), f"{h64}.{c64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise StsError("invalid_grant", "The subject token is not a valid JWT.")
    except InvalidSignature:
        raise StsError("invalid_grant", "Invalid JWT signature: the token is not signed by a key of the provider's "
                       "JWKS.")
    aud, now = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")], time.time()
    if claims.get("iss") != K8S_ISSUER:
        raise StsError("invalid_grant", f"The issuer in ID Token [{claims.get('iss')}] does not match the expected "
                       f"issuer [{K8S_ISSUER}].")
    if not {AUDIENCE, "https:" + AUDIENCE} & set(map(str, aud)):  # the provider's name, // or https:// form
        raise StsError("invalid_grant", f"The audience in ID Token [{','.join(map(str, aud))}] does not match the "
                       "expected audience.")
    if type(claims.get("exp")) not in (int, float) or claims["exp"] <= now:
        raise StsError("invalid_grant", "The ID Token has expired.")
    ttl = st.ttl["sts_token_ttl"]
    token = st.issue_token("federated", form.get("scope", "").split() or [CLOUD_PLATFORM], ttl)
    record["ok"] = True
    return {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer", "expires_in": ttl}


def bearer(st, headers, scopes, service, method):
    """Google's front end on an API call: 401 UNAUTHENTICATED + WWW-Authenticate for a missing, unknown,
    revoked or expired token (ErrorInfo reason CREDENTIALS_MISSING / ACCESS_TOKEN_TYPE_UNSUPPORTED /
    ACCESS_TOKEN_EXPIRED), 403 PERMISSION_DENIED for a token without the API's scopes."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    token, realm = token.strip(), 'Bearer realm="https://accounts.google.com/"'
    with st.lock:
        rec = st.tokens.get(token) if scheme.lower() == "bearer" and token else None
        reason = ("CREDENTIALS_MISSING" if scheme.lower() != "bearer" or not token else
                  "ACCESS_TOKEN_TYPE_UNSUPPORTED" if rec is None or rec["revoked"] else
                  "ACCESS_TOKEN_EXPIRED" if rec["exp"] <= time.time() else None)
        if reason == "CREDENTIALS_MISSING":
            st.unauthenticated += 1
            raise ApiError(401, "UNAUTHENTICATED", "Request is missing required authentication credential. " +
                           AUTH_HELP, error_info(reason, service, method), {"WWW-Authenticate": realm})
        if reason:
            st.unauthenticated += 1
            raise ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. " + AUTH_HELP,
                           error_info(reason, service, method),
                           {"WWW-Authenticate": realm + ', error="invalid_token"'})
        if not set(scopes) & set(rec["scopes"]):
            challenge = realm + f', error="insufficient_scope", scope="{" ".join(scopes)}"'
            raise ApiError(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                           error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT", service, method),
                           {"WWW-Authenticate": challenge})


def generate_access_token(st, email, headers, body):
    """POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken. IAM Service Account Credentials API
    (cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken)."""
    record = {"email": email, "ok": False}
    with st.lock:
        st.impersonation_requests.append(record)
    svc, rpc = "iamcredentials.googleapis.com", "google.iam.credentials.v1.IAMCredentials.GenerateAccessToken"
    if st.take_throttle("iam"):
        raise quota("Generate credentials requests", svc, rpc)
    bearer(st, headers, IAM_SCOPES, svc, rpc)
    if email != SA_EMAIL:
        raise ApiError(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                       "(or it may not exist).", error_info("IAM_PERMISSION_DENIED", svc, rpc))
    p = json_body(body, {"name", "delegates", "scope", "lifetime"})
    scope = p.get("scope")
    if not isinstance(scope, list) or not scope or not all(isinstance(s, str) and s for s in scope):
        raise invalid("Scope required.", "scope")
    lifetime = field(p, "lifetime", parse_duration, "type.googleapis.com/google.protobuf.Duration") or 3600
    if not 0 < lifetime <= 3600:
        raise invalid("The lifetime must be between 1s and 3600s (43200s with the constraints/iam."
                      "allowServiceAccountCredentialLifetimeExtension organization policy).", "lifetime")
    ttl = min(lifetime, st.ttl["impersonated_token_ttl"])
    token = st.issue_token("impersonated", scope, ttl)
    record["ok"] = True
    return {"accessToken": token, "expireTime": ts(time.time() + ttl)}


def metadata(st, method, path, query, headers):
    """GET /computeMetadata/v1/... "About VM metadata" / "Query VM metadata" (/compute/docs/metadata/overview,
    /compute/docs/metadata/querying-metadata): `Metadata-Flavor: Google` required (403 without it) and
    echoed; "Troubleshooting metadata server access issues" for 403/404/429. -> (status, text, type)."""
    with st.lock:
        st.metadata_requests += 1
    if st.take_throttle("metadata"):
        return 429, "Too many requests.\n", "text/plain"
    if method != "GET":
        return 405, "Method not allowed.\n", "text/plain"
    if path == "/":
        return 200, "computeMetadata/\n", "application/text"
    if headers.get("Metadata-Flavor") != "Google" or headers.get("X-Forwarded-For"):
        return 403, "Missing Metadata-Flavor:Google header.\n", "text/plain"
    sa = re.fullmatch(r"/computeMetadata/v1/instance/service-accounts/(default|" + re.escape(MDS_EMAIL) + r")/(\w*)",
                      path)
    if sa and sa.group(2) == "token":
        scopes = [s for s in ",".join(query.get("scopes", [])).split(",") if s] or [CLOUD_PLATFORM]
        ttl = st.ttl["metadata_token_ttl"]
        return 200, json.dumps({"access_token": st.issue_token("metadata", scopes, ttl), "expires_in": ttl,
                                "token_type": "Bearer"}), "application/json"
    texts = {"": "aliases\nemail\nidentity\nscopes\ntoken\n", "email": MDS_EMAIL, "aliases": "default\n",
             "scopes": CLOUD_PLATFORM + "\n"} if sa else {
        "/computeMetadata/v1/universe/universe-domain": "googleapis.com",
        "/computeMetadata/v1/project/project-id": PROJECT, "/computeMetadata/v1/project/numeric-project-id":
        PROJECT_NUMBER, "/computeMetadata/v1/instance/service-accounts/": f"{MDS_EMAIL}/\ndefault/\n"}
    text = texts.get(sa.group(2) if sa else path)
    return (200, text, "application/text") if text is not None else (404, "Not Found\n", "text/plain")

# ------------------------------------------------------------------ KMS API


def json_body(raw, allowed):
    """A request message in JSON; unknown field names are refused, as Google's JSON transcoding does."""
    try:
        p = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise invalid("Invalid JSON payload received. Unexpected token.")
    if not isinstance(p, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    for name in p:
        if name not in allowed:
            raise invalid(f"Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.", name)
    return p


def get_bytes(p, name, path=None):
    return field(p, name, unb64, "TYPE_BYTES", path) or b""


def check_crc(p, crc_field, data_field, data):
    """Request integrity ("Verifying end-to-end data integrity", /kms/docs/data-integrity-guidelines): an
    absent checksum is not verified (verified* false, omitted); a wrong one is INVALID_ARGUMENT."""
    value = field(p, crc_field, lambda x: int(x) if type(x) is int or re.fullmatch(r"-?\d{1,20}", x) else
                  int("x"), "type.googleapis.com/google.protobuf.Int64Value")
    if value is not None and value != crc32c(data):
        raise invalid(f"The checksum in field {snake(crc_field)} did not match the data in field {snake(data_field)}.")
    return value is not None


def version_json(k, v):
    d = {"name": k.vname(v), "state": v.state, "protectionLevel": v.protection, "algorithm": v.algorithm,
         "createTime": ts(v.created), "generateTime": ts(v.created)}
    return {**d, **({"destroyTime": ts(v.destroy_time)} if v.destroy_time else {}),
            **({"destroyEventTime": ts(v.destroy_event)} if v.destroy_event else {})}


def key_json(k):
    d = {"name": k.name, "purpose": k.purpose, "createTime": ts(k.created),
         "versionTemplate": {"protectionLevel": k.protection, "algorithm": k.algorithm},
         "destroyScheduledDuration": f"{DESTROY_DELAY}s"}
    if k.primary is not None and k.purpose == "ENCRYPT_DECRYPT":
        d["primary"] = version_json(k, k.versions[k.primary])
    if k.next_rotation is not None:
        d["nextRotationTime"] = ts(k.next_rotation)
    return {**d, **({"rotationPeriod": f"{int(k.rotation_period)}s"} if k.rotation_period else {})}


def rotation(p, purpose):
    """rotationPeriod, nextRotationTime ("Key rotation", /kms/docs/key-rotation): not for asymmetric keys;
    a period of 1 day to 876,000 hours."""
    period = field(p, "rotationPeriod", parse_duration, "type.googleapis.com/google.protobuf.Duration",
                   "crypto_key.rotation_period")
    nxt = field(p, "nextRotationTime", parse_ts, "type.googleapis.com/google.protobuf.Timestamp",
                "crypto_key.next_rotation_time")
    if (period or nxt) and purpose.startswith("ASYMMETRIC"):
        raise invalid("Automatic rotation is not supported for asymmetric keys.", "crypto_key.rotation_period")
    if period is not None and not 86400 <= period <= 876000 * 3600:
        raise invalid("crypto_key.rotation_period must be between 1 day and 876000 hours.",
                      "crypto_key.rotation_period")
    return period, nxt


def create_key(st, ring, key_id, p, skip_version=False):
    """cryptoKeys.create (/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/create): a first
    version unless skipInitialVersionCreation; a symmetric key's first version becomes its primary."""
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,63}", str(key_id)):
        raise invalid(f"crypto_key_id \"{key_id}\" must match [a-zA-Z0-9_-]{{1,63}}.", "crypto_key_id")
    purpose, tpl = enum_value("purpose", p.get("purpose")), p.get("versionTemplate") or {}
    if purpose not in ("ENCRYPT_DECRYPT", "ASYMMETRIC_SIGN", "ASYMMETRIC_DECRYPT", "MAC") or not isinstance(tpl, dict):
        raise invalid(f"crypto_key.purpose {p.get('purpose')!r} is missing or not supported by this fake.",
                      "crypto_key.purpose")
    algorithm = enum_value("algorithm", tpl.get("algorithm") or
                           ("GOOGLE_SYMMETRIC_ENCRYPTION" if purpose == "ENCRYPT_DECRYPT" else 0))
    if algorithm not in ALGS or ALGS[algorithm][0] != purpose:
        raise invalid(f"Algorithm {tpl.get('algorithm')} is not valid for purpose {purpose} (or not supported by this "
                      "fake).", "crypto_key.version_template.algorithm")
    protection = enum_value("protectionLevel", tpl.get("protectionLevel") or "SOFTWARE")
    if protection not in ("SOFTWARE", "HSM"):
        raise invalid(f"Protection level {tpl.get('protectionLevel')} is not supported by this fake.",
                      "crypto_key.version_template.protection_level")
    period, nxt = rotation(p, purpose)
    if period and nxt is None:
        raise invalid("crypto_key.next_rotation_time is required with a rotation_period.", "crypto_key")
    with st.lock:
        if ring != RING_NAME:
            raise not_found(ring)
        if key_id in st.keys:
            raise ApiError(409, "ALREADY_EXISTS", f"{ring}/cryptoKeys/{key_id} already exists.")
        k = st.keys[key_id] = CryptoKey(f"{ring}/cryptoKeys/{key_id}", purpose, algorithm, protection, period, nxt)
        if not skip_version:
            v = k.add_version()
            k.primary = v.number if purpose == "ENCRYPT_DECRYPT" else None
        return k


def update_key(st, k, mask, p):
    """cryptoKeys.patch (updateMask): rotation_period, next_rotation_time; labels accepted, not kept."""
    paths = {snake(x.strip()) for x in mask.split(",") if x.strip()}
    allowed = {"rotation_period", "next_rotation_time", "labels"}
    if not paths or paths - allowed:
        raise invalid(f"update_mask must name some of: {', '.join(sorted(allowed))}.", "update_mask")
    period, nxt = rotation(p, k.purpose)
    with st.lock:
        new_period = period if "rotation_period" in paths else k.rotation_period
        new_next = nxt if "next_rotation_time" in paths else k.next_rotation
        if new_period and new_next is None:
            raise invalid("crypto_key.next_rotation_time is required with a rotation_period.", "crypto_key")
        k.rotation_period, k.next_rotation = new_period, new_next
        return key_json(k)


def transition(st, k, v, op, state=None):
    """cryptoKeyVersions.patch (updateMask=state: ENABLED <-> DISABLED), :destroy (-> DESTROY_SCHEDULED with
    destroyTime = now + destroyScheduledDuration), :restore (DESTROY_SCHEDULED -> DISABLED)."""
    with st.lock:
        allowed = ("DESTROY_SCHEDULED",) if op == "restore" else ("ENABLED", "DISABLED")
        if op == "update" and state not in ("ENABLED", "DISABLED"):
            raise invalid(f"crypto_key_version.state may only be set to ENABLED or DISABLED, not {state}.",
                          "crypto_key_version.state")
        if v.state not in allowed:
            raise precondition(f"{k.vname(v)} cannot be {op.rstrip('e')}ed, current state is: {v.state}.",
                               f"KEY_{v.state}", k.vname(v))
        v.state, v.destroy_time = ({"update": (state, None), "restore": ("DISABLED", None),
                                    "destroy": ("DESTROY_SCHEDULED", time.time() + DESTROY_DELAY)}[op])
        return version_json(k, v)


def usable(st, k, v, purpose, rpc):
    """The version's material if the key's purpose allows the op and the version is ENABLED; otherwise
    400 FAILED_PRECONDITION ("... is not enabled, current state is: X.", as Cloud KMS answers)."""
    with st.lock:
        if k.purpose != purpose:
            raise precondition(f"{k.name} has purpose {k.purpose}; {rpc} requires purpose {purpose}.",
                               "KEY_PURPOSE", k.name)
        if v is None:
            raise precondition(f"{k.name} has no primary version.", "KEY_NO_PRIMARY", k.name)
        if v.state != "ENABLED":
            raise precondition(f"{k.vname(v)} is not enabled, current state is: {v.state}.", f"KEY_{v.state}",
                               k.vname(v))
        return v.material


def public_key(st, k, v, fmt):
    """cryptoKeyVersions.getPublicKey: `pem` (SubjectPublicKeyInfo) and `pemCrc32c`."""
    with st.lock:
        purpose = k.purpose if k.purpose.startswith("ASYMMETRIC") else "ASYMMETRIC_SIGN"
    key = usable(st, k, v, purpose, "GetPublicKey").public_key()
    fmt = enum_value("publicKeyFormat", int(fmt or 0) if re.fullmatch(r"\d*", fmt) else fmt)
    out = {"name": k.vname(v), "algorithm": v.algorithm, "protectionLevel": v.protection}
    if fmt in ("PUBLIC_KEY_FORMAT_UNSPECIFIED", "PEM"):
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"pem": pem.decode(), **out, "pemCrc32c": str(crc32c(pem)),
                **({"publicKeyFormat": "PEM"} if fmt == "PEM" else {})}
    raise invalid(f"Public key format {fmt} is not supported for algorithm {v.algorithm}.", "public_key_format")


def encrypt(st, k, v, p):
    """cryptoKeys.encrypt (/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt):
    AES-256-GCM with the primary (or the named) version. The fake's own ciphertext format:
    0x0F 'K' | key tag (16) | version (uint32 BE) | nonce (12) | GCM output; the header is authenticated
    together with the AAD."""
    material = usable(st, k, v, "ENCRYPT_DECRYPT", "Encrypt")
    plaintext, aad = get_bytes(p, "plaintext"), get_bytes(p, "additionalAuthenticatedData")
    if not plaintext:
        raise invalid("The request must include plaintext.", "plaintext")
    if len(plaintext) > MAX_DATA or len(aad) > MAX_DATA or (v.protection == "HSM" and len(plaintext) + len(aad) > 8192):
        raise invalid("plaintext and additional_authenticated_data must be no larger than 64 KiB each (8 KiB "
                      "together for HSM).", "plaintext")
    verified = {"verifiedPlaintextCrc32c": check_crc(p, "plaintextCrc32c", "plaintext", plaintext),
                "verifiedAdditionalAuthenticatedDataCrc32c":
                check_crc(p, "additionalAuthenticatedDataCrc32c", "additionalAuthenticatedData", aad)}
    header, nonce = b"\x0fK" + k.tag + struct.pack(">I", v.number), secrets.token_bytes(12)
    ciphertext = header + nonce + AESGCM(material).encrypt(nonce, plaintext, header + aad)
    return {"name": k.vname(v), "ciphertext": b64(ciphertext), "ciphertextCrc32c": str(crc32c(ciphertext)),
            "protectionLevel": v.protection, **{f: True for f, ok in verified.items() if ok}}


def decrypt(st, k, p):
    """cryptoKeys.decrypt: the version is the one named inside the ciphertext; a ciphertext that does not
    open is 400 INVALID_ARGUMENT "Decryption failed: the ciphertext is invalid."."""
    ciphertext, aad = get_bytes(p, "ciphertext"), get_bytes(p, "additionalAuthenticatedData")
    if not ciphertext:
        raise invalid("The request must include ciphertext.", "ciphertext")
    check_crc(p, "ciphertextCrc32c", "ciphertext", ciphertext)
    check_crc(p, "additionalAuthenticatedDataCrc32c", "additionalAuthenticatedData", aad)
    bad, header = invalid("Decryption failed: the ciphertext is invalid."), ciphertext[:22]
    with st.lock:
        v = k.versions.get(struct.unpack(">I", header[18:])[0]) if len(ciphertext) >= 50 else None
        if k.purpose == "ENCRYPT_DECRYPT" and (v is None or header[:18] != b"\x0fK" + k.tag):
            raise bad
    material = usable(st, k, v, "ENCRYPT_DECRYPT", "Decrypt")
    try:
        plaintext = AESGCM(material).decrypt(ciphertext[22:34], ciphertext[34:], header + aad)
    except InvalidTag:
        raise bad
    return {"plaintext": b64(plaintext), "plaintextCrc32c": str(crc32c(plaintext)), "protectionLevel": v.protection,
            **({"usedPrimary": True} if v.number == k.primary else {})}


def asymmetric_sign(st, k, v, p):
    """cryptoKeyVersions.asymmetricSign: `digest` {sha256|sha384|sha512} of the algorithm's hash; for
    EC_SIGN_ED25519 the message itself in `data` (PureEdDSA, RFC 8032), with `dataCrc32c` and
    `verifiedDataCrc32c`; EC signatures DER (ECDSA-Sig-Value), RSA-PSS salt = digest length."""
    material = usable(st, k, v, "ASYMMETRIC_SIGN", "AsymmetricSign")
    _, kind, _, hname = ALGS[v.algorithm]
    if kind == "ed25519":
        if "digest" in p or "data" not in p:
            raise invalid(f"The algorithm {v.algorithm} signs data, not a digest: send data.", "data")
        data = get_bytes(p, "data")
        if len(data) > 65536:
            raise invalid("data must be no larger than 64 KiB.", "data")
        verified = check_crc(p, "dataCrc32c", "data", data)
        sig = material.sign(data)
        return {"signature": b64(sig), "signatureCrc32c": str(crc32c(sig)), "name": k.vname(v),
                "protectionLevel": v.protection, **({"verifiedDataCrc32c": True} if verified else {})}
    want = hname.lower()
    if "data" in p:
        raise invalid(f"The algorithm {v.algorithm} signs a digest, not data: send digest.", "data")
    if not isinstance(p.get("digest"), dict) or set(p["digest"]) != {want}:
        raise invalid(f"The digest type does not match the algorithm {v.algorithm}: expected digest.{want}.", "digest")
    digest = get_bytes(p["digest"], want, f"digest.{want}")
    if len(digest) != HASHES[hname].digest_size:
        raise invalid(f"The digest must be {HASHES[hname].digest_size} bytes for {v.algorithm}.", "digest")
    verified = check_crc(p, "digestCrc32c", "digest", digest)
    pre = Prehashed(HASHES[hname]())
    sig = (material.sign(digest, ec.ECDSA(pre)) if kind == "ec" else material.sign(digest, padding.PKCS1v15(), pre)
           if kind == "pkcs1" else material.sign(digest, padding.PSS(padding.MGF1(HASHES[hname]()),
                                                                     HASHES[hname].digest_size), pre))
    return {"signature": b64(sig), "signatureCrc32c": str(crc32c(sig)), "name": k.vname(v),
            "protectionLevel": v.protection, **({"verifiedDigestCrc32c": True} if verified else {})}


def asymmetric_decrypt(st, k, v, p):
    """cryptoKeyVersions.asymmetricDecrypt: RSAES-OAEP, OAEP and MGF1 hash = the algorithm's, no label."""
    material = usable(st, k, v, "ASYMMETRIC_DECRYPT", "AsymmetricDecrypt")
    ciphertext, h = get_bytes(p, "ciphertext"), HASHES[ALGS[v.algorithm][3]]
    verified = check_crc(p, "ciphertextCrc32c", "ciphertext", ciphertext)
    try:
        plaintext = material.decrypt(ciphertext, padding.OAEP(padding.MGF1(h()), h(), None))
    except ValueError:
        raise invalid("Decryption failed: the ciphertext is invalid.")
    return {"plaintext": b64(plaintext), "plaintextCrc32c": str(crc32c(plaintext)), "protectionLevel": v.protection,
            **({"verifiedCiphertextCrc32c": True} if verified else {})}


def mac(st, k, v, p, verify):
    """cryptoKeyVersions.macSign / macVerify: HMAC with the algorithm's hash; verifiedSuccessIntegrity
    mirrors `success`."""
    material = usable(st, k, v, "MAC", "MacVerify" if verify else "MacSign")
    data = get_bytes(p, "data")
    if len(data) > MAX_DATA:
        raise invalid("data must be no larger than 64 KiB.", "data")
    out = {"name": k.vname(v), "protectionLevel": v.protection,
           **({"verifiedDataCrc32c": True} if check_crc(p, "dataCrc32c", "data", data) else {})}
    tag = hmac.new(material, data, HASHES[ALGS[v.algorithm][3]].name).digest()
    if not verify:
        return {**out, "mac": b64(tag), "macCrc32c": str(crc32c(tag))}
    given = get_bytes(p, "mac")
    return {**out, **({"verifiedMacCrc32c": True} if check_crc(p, "macCrc32c", "mac", given) else {}),
            **({"success": True, "verifiedSuccessIntegrity": True} if hmac.compare_digest(given, tag) else {})}


def listing(items, query, name):
    """List methods: AIP-160 filter subset (`state|algorithm|protectionLevel` `=`/`!=`/`:` VALUE joined by
    AND/OR, AND binding tighter), orderBy `name [desc]`, AIP-158 paging (pageSize 0 = 25, at most 1000)."""
    q1 = lambda n: query.get(n, [""])[0].strip()  # noqa: E731
    text, order, size, token = q1("filter"), q1("orderBy"), q1("pageSize") or "0", q1("pageToken")
    if text:
        def term(t):
            m = re.fullmatch(r"\s*(state|algorithm|protection_?[lL]evel)\s*(!=|=|:)\s*\"?(\w+)\"?\s*", t)
            if not m:
                raise invalid(f"Invalid filter: \"{text[:60]}\".", "filter")
            f = "protectionLevel" if m.group(1).startswith("protection") else m.group(1)
            return lambda d: (d.get(f) == m.group(3)) != (m.group(2) == "!=")
        alts = [[term(t) for t in re.split(r"\s+AND\s+", c)] for c in re.split(r"\s+OR\s+", text)]
        items = [d for d in items if any(all(f(d) for f in alt) for alt in alts)]
    if order not in ("", "name", "name asc", "name desc") or not re.fullmatch(r"\d{1,9}", size):
        raise invalid("Invalid order_by or page_size.", "order_by" if order else "page_size")
    try:
        start = int(unb64(token).decode()[5:]) if token else 0
    except (ValueError, UnicodeDecodeError):
        raise invalid("Invalid page token.", "page_token")
    items, size = items[::-1] if order == "name desc" else items, min(int(size) or 25, 1000)
    out = {name: items[start:start + size], "totalSize": len(items)} if items else {}
    return {**out, **({"nextPageToken": b64u(f"fake:{start + size}".encode())} if start + size < len(items) else {})}


CRYPTO_KEY_FIELDS = {"name", "primary", "purpose", "createTime", "nextRotationTime", "rotationPeriod",
                     "versionTemplate", "labels", "importOnly", "destroyScheduledDuration", "cryptoKeyBackend",
                     "keyAccessJustificationsPolicy"}
VERSION_FIELDS = {"name", "state", "protectionLevel", "algorithm", "attestation", "createTime", "generateTime",
                  "destroyTime", "destroyEventTime", "importJob", "importTime", "importFailureReason",
                  "generationFailureReason", "externalDestructionFailureReason", "externalProtectionLevelOptions",
                  "reimportEligible"}
OP_FIELDS = {"encrypt": {"plaintext", "additionalAuthenticatedData", "plaintextCrc32c",
                         "additionalAuthenticatedDataCrc32c"},
             "decrypt": {"ciphertext", "additionalAuthenticatedData", "ciphertextCrc32c",
                         "additionalAuthenticatedDataCrc32c"},
             "asymmetricSign": {"digest", "digestCrc32c", "data", "dataCrc32c"},
             "asymmetricDecrypt": {"ciphertext", "ciphertextCrc32c"}, "macSign": {"data", "dataCrc32c"},
             "macVerify": {"data", "dataCrc32c", "mac", "macCrc32c"}, "updatePrimaryVersion": {"cryptoKeyVersionId"},
             "destroy": set(), "restore": set()}
# (path segments, HTTP method, verb) -> (RPC, quota kind); names per the v1 REST reference.
KMS_ROUTES = {(7, "POST", ""): ("createCryptoKey", "write"), (8, "GET", ""): ("getCryptoKey", "read"),
              (8, "PATCH", ""): ("updateCryptoKey", "write"), (8, "POST", "encrypt"): ("encrypt", "crypto"),
              (8, "POST", "decrypt"): ("decrypt", "crypto"),
              (8, "POST", "updatePrimaryVersion"): ("updateCryptoKeyPrimaryVersion", "write"),
              (9, "GET", ""): ("listCryptoKeyVersions", "read"), (9, "POST", ""): ("createCryptoKeyVersion", "write"),
              (10, "GET", ""): ("getCryptoKeyVersion", "read"), (10, "PATCH", ""): ("updateCryptoKeyVersion", "write"),
              (10, "POST", "destroy"): ("destroyCryptoKeyVersion", "write"),
              (10, "POST", "restore"): ("restoreCryptoKeyVersion", "write"),
              (10, "POST", "encrypt"): ("encrypt", "crypto"),
              (10, "POST", "asymmetricSign"): ("asymmetricSign", "crypto"),
              (10, "POST", "asymmetricDecrypt"): ("asymmetricDecrypt", "crypto"),
              (10, "POST", "macSign"): ("macSign", "crypto"), (10, "POST", "macVerify"): ("macVerify", "crypto"),
              (11, "GET", ""): ("getPublicKey", "read")}


def kms(st, method, path, query, headers, raw):
    """Cloud KMS REST v1 (cloud.google.com/kms/docs/reference/rest): /v1/{name}[:verb]. Auth, then quota, then
    the method; every method counts in stats, whatever its answer."""
    name, _, verb = path.partition(":")
    seg = name.split("/")
    shape = ["projects", None, "locations", None, "keyRings", None, "cryptoKeys", None, "cryptoKeyVersions", None,
             "publicKey"]
    route = KMS_ROUTES.get((len(seg), method, verb)) if all(s == w or (w is None and s) for s, w in zip(seg, shape)) \
        else None
    if route is None:
        raise ApiError(404, "NOT_FOUND", f"Method not found: {method} /v1/{path}")
    rpc, full = route[0], f"google.cloud.kms.v1.KeyManagementService.{route[0][0].upper()}{route[0][1:]}"
    bearer(st, headers, KMS_SCOPES, "cloudkms.googleapis.com", full)
    if st.take_throttle("kms"):
        raise quota({"crypto": "Cryptographic requests", "read": "Read requests", "write": "Write requests"}[route[1]],
                    "cloudkms.googleapis.com", full)
    with st.lock:
        st.kms_requests[rpc] += 1
    q1, ring = (lambda n: query.get(n, [""])[0]), "/".join(seg[:6])  # noqa: E731
    if method in ("POST", "PATCH"):
        p = json_body(raw, (OP_FIELDS[verb] | {"name"}) if verb else VERSION_FIELDS if len(seg) == 9 or
                      rpc == "updateCryptoKeyVersion" else CRYPTO_KEY_FIELDS)
    if rpc == "createCryptoKey":
        return key_json(create_key(st, ring, q1("cryptoKeyId"), p, q1("skipInitialVersionCreation") == "true"))
    k = st.key(ring, seg[7])
    if len(seg) > 9:
        v = st.version(k, seg[9])
    else:
        with st.lock:
            v = k.versions.get(k.primary)
    ops = {"getCryptoKey": lambda: key_json(k), "updateCryptoKey": lambda: update_key(st, k, q1("updateMask"), p),
           "listCryptoKeyVersions": lambda: listing([version_json(k, x) for _, x in sorted(k.versions.items())],
                                                    query, "cryptoKeyVersions"),
           "createCryptoKeyVersion": lambda: version_json(k, k.add_version()),
           "getCryptoKeyVersion": lambda: version_json(k, v),
           "destroyCryptoKeyVersion": lambda: transition(st, k, v, "destroy"),
           "restoreCryptoKeyVersion": lambda: transition(st, k, v, "restore"),
           "getPublicKey": lambda: public_key(st, k, v, q1("publicKeyFormat")),
           "encrypt": lambda: encrypt(st, k, v, p), "decrypt": lambda: decrypt(st, k, p),
           "asymmetricSign": lambda: asymmetric_sign(st, k, v, p),
           "asymmetricDecrypt": lambda: asymmetric_decrypt(st, k, v, p),
           "macSign": lambda: mac(st, k, v, p, False), "macVerify": lambda: mac(st, k, v, p, True)}
    if rpc == "updateCryptoKeyVersion":
        if [snake(x.strip()) for x in q1("updateMask").split(",") if x.strip()] != ["state"]:
            raise invalid("update_mask must be \"state\", the only mutable field of a version.", "update_mask")
        return transition(st, k, v, "update", enum_value("state", p.get("state")))
    if rpc == "updateCryptoKeyPrimaryVersion":
        v = st.version(k, str(p.get("cryptoKeyVersionId", "")))
        usable(st, k, v, "ENCRYPT_DECRYPT", "UpdateCryptoKeyPrimaryVersion")
        with st.lock:
            k.primary = v.number
            return key_json(k)
    if rpc in ("getCryptoKey", "listCryptoKeyVersions", "createCryptoKeyVersion", "getCryptoKeyVersion"):
        with st.lock:
            return ops[rpc]()
    return ops[rpc]()


def corrupt(st, answer):
    """Admin-armed: the next n answers that carry a field carry a wrong value in it (CRC + 1, a flipped bool,
    a flipped bit in bytes, a changed PEM character)."""
    with st.lock:
        for name, left in st.corrupt.items():
            if left > 0 and name in answer:
                st.corrupt[name], value = left - 1, answer[name]
                if isinstance(value, bool):
                    answer[name] = not value
                elif name.endswith("Crc32c"):
                    answer[name] = str((int(value) + 1) % (1 << 32))
                elif name == "pem":
                    i = value.index("\n") + 5
                    answer[name] = value[:i] + ("B" if value[i] == "A" else "A") + value[i + 1:]
                else:
                    data = bytearray(unb64(value) or b"\0")
                    data[0] ^= 1
                    answer[name] = b64(bytes(data))
    return answer

# -------------------------------------------------------------------- admin


def admin(st, method, path, raw):
    """The test-only API under /_fake/ (no auth; see README)."""
    try:
        p = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        p = None
    if not isinstance(p, dict):
        raise invalid("The body must be a JSON object.")

    def integer(name, default, low=None):
        value = p.get(name, default)
        if type(value) is not int or (low is not None and value < low):
            raise invalid(f"'{name}' must be an integer" + (f" >= {low}." if low is not None else "."))
        return value
    m = re.fullmatch(r"/_fake/versions/([^/]+)/([^/]+)/state", path)
    if method == "POST" and path == "/_fake/keys":
        k = create_key(st, RING_NAME, p.get("name"), {"purpose": p.get("purpose"), "versionTemplate": {
            "algorithm": p.get("algorithm"), "protectionLevel": p.get("protectionLevel")},
            **{f: p[f] for f in ("rotationPeriod", "nextRotationTime") if f in p}})
        with st.lock:
            return key_json(k)
    if method == "POST" and m:
        k = st.key(RING_NAME, m.group(1))
        v, state = st.version(k, m.group(2)), p.get("state")
        if state not in ("ENABLED", "DISABLED", "DESTROY_SCHEDULED", "DESTROYED"):
            raise invalid("'state' must be ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED.")
        with st.lock:
            if v.state == "DESTROYED" and state != "DESTROYED":
                raise precondition(f"{k.vname(v)} is destroyed: its material is gone.", "KEY_DESTROYED", k.vname(v))
            v.state, v.destroy_time = state, time.time() + DESTROY_DELAY if state == "DESTROY_SCHEDULED" else None
            if state == "DESTROYED":
                v.material, v.destroy_event = None, time.time()
            return version_json(k, v)
    if method == "POST" and path == "/_fake/subject-token":
        if p.get("aud") is not None and not isinstance(p.get("aud"), str):
            raise invalid("'aud' must be a string.")
        token = st.mint_subject_token(integer("ttl", 3600), p.get("aud"))
        if p.get("write"):
            write_file(os.path.join(st.dir, "subject-token"), token, 0o600)
        return {"token": token}
    if method == "POST" and path == "/_fake/revoke":
        with st.lock:
            for rec in st.tokens.values():
                rec["revoked"] = True
            return {"revoked": len(st.tokens)}
    if method == "POST" and path == "/_fake/throttle":
        count, target = integer("count", 1, 0), p.get("target", "kms")
        if target not in st.throttles:
            raise invalid("'target' must be kms, sts, iam or metadata.")
        with st.lock:
            st.throttles[target] = count
        return {"target": target, "count": count}
    if method == "POST" and path == "/_fake/corrupt":
        count, name = integer("count", 1, 0), p.get("field")
        if not isinstance(name, str) or not (name.endswith("Crc32c") or name.startswith("verified") or name in
                                             ("success", "pem", "signature", "ciphertext", "plaintext", "mac")):
            raise invalid("'field' must be a *Crc32c or verified* field, success, pem, signature, ciphertext, "
                          "plaintext or mac.")
        with st.lock:
            st.corrupt[name] = count
        return {"field": name, "count": count}
    if path == "/_fake/settings" and method in ("GET", "POST"):
        new = {n: integer(n, st.ttl[n], 2 if n.startswith("impersonated") else 0) for n in st.ttl}
        with st.lock:
            st.ttl.update(new)
            return dict(st.ttl)
    if method == "GET" and path == "/_fake/stats":
        with st.lock:
            return {"sts_requests": [dict(r) for r in st.sts_requests], "impersonation_requests":
                    [dict(r) for r in st.impersonation_requests], "metadata_requests": st.metadata_requests,
                    "kms_requests": dict(st.kms_requests), "unauthenticated": st.unauthenticated,
                    "throttled": st.throttled, "traceparents": list(st.traceparents)}
    raise ApiError(404, "NOT_FOUND", f"No admin route {method} {path}.")

# --------------------------------------------------------------------- main


class Handler(QuietHandler):
    server_version = "fake-gcp"

    def read_body(self):  # clients here send Content-Length; chunked bodies are refused
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ValueError
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise ValueError
        return self.rfile.read(length)

    def answer(self, status, data, ctype, headers=None):
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj, headers=None):
        self.answer(status, json.dumps(obj, indent=2).encode(), "application/json; charset=UTF-8", headers)

    def dispatch(self):
        try:
            raw = self.read_body()
        except ValueError:
            self.close_connection = True
            return self.send_json(413, ApiError(413, "INVALID_ARGUMENT", "A body needs a Content-Length of at most "
                                                "1 MiB.").body())
        u, st, method = urlsplit(self.path), STATE, self.command
        path, query = unquote(u.path), parse_qs(u.query, keep_blank_values=True)
        iam = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken", path)
        try:
            if path.startswith("/_fake/"):
                self.send_json(200, admin(st, method, path, raw))
            elif path == "/" or path.startswith("/computeMetadata/"):
                status, text, ctype = metadata(st, method, path, query, self.headers)
                self.answer(status, text.encode(), ctype, {"Metadata-Flavor": "Google", "Server": "Metadata Server"})
            elif path == "/v1/token" and method == "POST":
                self.send_json(200, sts_token(st, self.headers, raw))
            elif iam and method == "POST":
                self.send_json(200, generate_access_token(st, iam.group(1), self.headers, raw))
            elif path.startswith("/v1/projects/"):
                if self.headers.get("traceparent"):  # Cloud KMS takes the W3C trace context
                    with st.lock:
                        st.traceparents = (st.traceparents + [self.headers["traceparent"]])[-100:]
                answer = corrupt(st, kms(st, method, path[len("/v1/"):], query, self.headers, raw))
                self.send_json(200, encode_enums(answer, "enum-encoding=int" in query.get("$alt", [""])[0]))
            else:
                raise ApiError(404, "NOT_FOUND", f"The requested URL {path} was not found on this server.")
        except ApiError as e:
            self.send_json(e.code, e.body(), e.headers)
        except StsError as e:
            self.send_json(400, {"error": e.error, "error_description": e.description})
        except Exception:  # our own bug: a 500 with a Status body, the traceback to our log only
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, ApiError(500, "INTERNAL", "The fake failed (see its log).").body())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch


def main():
    global STATE
    args = parse_args(__doc__.splitlines()[0], "where to write subject-token, external-account.json, env, ...")
    d, j, q = args.dir, os.path.join, shlex.quote
    server = QuietServer(("127.0.0.1", args.port), Handler)
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    st = STATE = State(d)
    for name, purpose, alg in (("gcp-sign", "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"),
                               ("gcp-enc", "ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"),
                               ("gcp-mac", "MAC", "HMAC_SHA256")):
        create_key(st, RING_NAME, name, {"purpose": purpose, "versionTemplate": {"algorithm": alg}})
    write_file(j(d, "subject-token"), st.mint_subject_token(3600), 0o600)   # no newline, as the kubelet writes it
    account = {"universe_domain": "googleapis.com", "type": "external_account", "audience": AUDIENCE,
               "subject_token_type": JWT_TYPES[0], "token_url": f"{base}/v1/token",
               "credential_source": {"file": j(d, "subject-token"), "format": {"type": "text"}}}
    write_file(j(d, "external-account-direct.json"), json.dumps(account, indent=2) + "\n")
    write_file(j(d, "external-account.json"), json.dumps({**account, "service_account_impersonation_url":
               f"{base}/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken"}, indent=2) + "\n")
    write_file(j(d, "env"), f"GOOGLE_APPLICATION_CREDENTIALS={q(j(d, 'external-account.json'))}\n"
               f"GCE_METADATA_HOST=127.0.0.1:{port}\n")
    write_file(j(d, "env.direct"), f"GOOGLE_APPLICATION_CREDENTIALS={q(j(d, 'external-account-direct.json'))}\n")
    write_file(j(d, "env.mds"), f"GCE_METADATA_HOST=127.0.0.1:{port}\n")
    write_file(j(d, "config.yaml"), (
        "# Written by tests/fakes/gcp_kms.py (a contract fake, not Google Cloud).\n"
        f"listen: {{ socket: {json.dumps(j(d, 'kms.sock'))} }}\n"
        "backends:\n  gcp: { type: gcp, project: fake-project, location: global, key_ring: fake-ring, "
        f"endpoint: \"{base}\" }}\n"
        "keys:\n  gcp-sign: { backend: gcp, key: gcp-sign }\n  gcp-enc: { backend: gcp, key: gcp-enc }\n"
        "  gcp-mac: { backend: gcp, key: gcp-mac }\n"
        f"callers:\n  - {{ uids: [{args.uid}], keys: [\"*\"], ops: [\"*\"] }}\n"))
    write_file(j(d, "url"), base + "\n")  # last: harnesses wait for this file
    serve(server, "fake-gcp", f"contract fake of Cloud KMS + STS + IAM Credentials + metadata on {base} (dir {d})")


if __name__ == "__main__":
    main()

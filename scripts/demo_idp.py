#!/usr/bin/env python3
"""A local OIDC issuer for the demo (`scripts/run --jwt`), Keycloak-shaped: an RSA key kept in
DATA_DIR/idp-key.pem, its JWKS served on 127.0.0.1:PORT at Keycloak's path, and two RS256
access tokens written to DATA_DIR: demo-user.jwt (the demo user) and demo-admin.jwt (a
subject with the admin role). Tokens last 12 hours; run again for fresh ones.

usage: demo_idp.py --port PORT --data-dir DIR [--audience AUD] [--admin-role ROLE]
"""
import argparse
import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

REALM = "/realms/opsgate"
JWKS_PATH = f"{REALM}/protocol/openid-connect/certs"
KID = "demo-rsa-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(path: str) -> rsa.RSAPrivateKey:
    if os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return key


def jwks(key: rsa.RSAPrivateKey) -> dict:
    n = key.public_key().public_numbers()
    return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
                      "n": b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                      "e": b64url(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}]}


def token(key: rsa.RSAPrivateKey, issuer: str, audience: str, sub: str, roles: list[str]) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": ["account", audience], "sub": sub, "typ": "Bearer",
              "iat": now - 5, "nbf": now - 5, "exp": now + 12 * 3600, "azp": "opsgate-demo",
              "realm_access": {"roles": roles}}
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(sig)}"


def main() -> None:
    p = argparse.ArgumentParser(usage=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--audience", default="opsgate-gateway")
    p.add_argument("--admin-role", default="opsgate-admin")
    a = p.parse_args()
    key = load_key(os.path.join(a.data_dir, "idp-key.pem"))
    issuer = f"http://127.0.0.1:{a.port}{REALM}"
    for name, sub, roles in [("demo-user", "demo-user", []), ("demo-admin", "demo-admin", [a.admin_role])]:
        with open(os.path.join(a.data_dir, f"{name}.jwt"), "w") as f:
            f.write(token(key, issuer, a.audience, sub, roles) + "\n")
    body = json.dumps(jwks(key)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != JWKS_PATH:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"demo issuer {issuer} listening on 127.0.0.1:{a.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks Portico's OpenID Connect discovery the way a standard JWT library uses it: starting from
nothing but the issuer URL, PyJWT reads {issuer}/.well-known/openid-configuration, fetches the keys
from its jwks_uri with PyJWKClient, and verifies a Portico access token (signature, algorithm from
id_token_signing_alg_values_supported, iss, aud, exp). A tampered token and a token for another
audience must be refused.

It starts its own `portico serve` (the binary given, default target/debug/portico) with
JWT_ISSUER set to the edge's URL, on free ports, and stops it. Needs `pip install PyJWT[crypto]`
(tools/requirements.txt).

Usage: tools/oidc_check.py [path/to/portico]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import jwt

# What OpenID Connect Discovery 1.0 §3 and RFC 8414 say a verifier may rely on, and Portico has.
FIELDS = ("issuer", "jwks_uri", "id_token_signing_alg_values_supported", "subject_types_supported")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/portico")
    workdir = tempfile.mkdtemp(prefix="portico-oidc-")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EDGE_ADDR=f"127.0.0.1:{port}", AUTH_ADDR="127.0.0.1:0",
               CONTENT_ADDR="127.0.0.1:0", CHAT_ADDR="127.0.0.1:0", RATELIMIT_ADDR="127.0.0.1:0",
               JWT_ISSUER=issuer, DATABASE_URL=f"sqlite://{workdir}/portico.db?mode=rwc",
               RUST_LOG="warn")
    for inherited in ("REDIS_URL", "JWT_SIGNING_KEY_FILE", "JWT_AUDIENCE"):
        env.pop(inherited, None)
    server = subprocess.Popen([binary, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{issuer}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            print("portico did not become ready", file=sys.stderr)
            return 1
        account = {"email": "oidc@example.com", "password": "correct horse battery staple"}
        post(f"{issuer}/api/v1/auth/register", account)
        token = post(f"{issuer}/api/v1/auth/login", account)["accessToken"]

        # From here on: only the issuer URL.
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=10) as r:
            metadata = json.load(r)
        missing = [field for field in FIELDS if field not in metadata]
        assert not missing, f"discovery lacks {missing}: {metadata}"
        assert metadata["issuer"] == issuer, metadata["issuer"]
        algorithms = metadata["id_token_signing_alg_values_supported"]
        assert algorithms and all(isinstance(a, str) for a in algorithms), algorithms

        keys = jwt.PyJWKClient(metadata["jwks_uri"], cache_keys=True)
        key = keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=algorithms, audience="portico",
                            issuer=metadata["issuer"], options={"require": ["exp", "iss", "aud", "sub"]})
        assert claims["iss"] == issuer and claims["sub"], claims

        header, payload, signature = token.split(".")
        forged = ".".join([header, payload, signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")])
        for name, candidate, audience in (("tampered signature", forged, "portico"),
                                          ("another audience", token, "someone-else")):
            try:
                jwt.decode(candidate, key.key, algorithms=algorithms, audience=audience,
                           issuer=metadata["issuer"])
            except jwt.InvalidTokenError:
                continue
            print(f"{name} was accepted", file=sys.stderr)
            return 1
        print(f"OIDC discovery check: ok (PyJWT {jwt.__version__}: issuer {issuer} -> jwks_uri -> "
              f"{key.key_id} ({', '.join(algorithms)}) verified a Portico token; forgeries refused)")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fuzzes a live `portico serve` from its own OpenAPI document with schemathesis, every check on
(`--checks all`: no 5xx, status codes, content types, response headers and schemas as documented,
invalid input refused, valid input accepted, ...), for a bounded time; exit status 0 only when it
finds nothing.

It starts its own `portico serve` (the binary given, default target/debug/portico) on a free
port with a temporary data directory (SQLite, in-memory cache, no Redis), a 32+ character
ADMIN_API_KEY sent as `X-Admin-Key` on every request (so admin routes are exercised, not just
refused), an access token of an account registered here as `Authorization`, and rate limits high
enough that 429s do not hide the routes; it stops portico at the end, whatever happens.

Installs schemathesis (pinned below) with pip when it is missing.

Not yet clean (issue #17). What a 120 s run still reports, and the fix each needs:
- POST /api/v1/chat, /v1/chat/completions, /v1/embeddings, /api/v1/admin/content (POST, PUT
  .../{slug}), PUT /api/v1/admin/llm/providers/{name}: their hooks read their own JSON, and
  the document says only `{"type": "object"}` for the body; openapi.rs needs the schema of each
  (messages 1..256, input, slug/title/status, priority and/or enabled).
- POST /api/v1/api-keys: the hook's body schema is CreateApiKeyRequest without `required` on
  `name` (and the durations also as text such as `30d`).
- POST /api/v1/admin/auth/revoke and /api/v1/admin/ratelimit/reset: a proto `oneof` (exactly
  one of two fields) is not yet a `oneOf` of the two in the document.
- GET /api/v1/admin/usage: `user`, `key` or both (an `anyOf` of required query parameters).
- POST /api/v1/auth/verify-email and /api/v1/auth/password-reset/confirm: an unknown token is
  400 INVALID_ARGUMENT by contract, so a schema-valid random token is "rejected"
  (positive_data_acceptance); either the contract answers such a token otherwise, or that
  check is turned off for these two with this reason.
- POST /api/v1/admin/auth/unlock accepted an IP schemathesis thinks invalid (ST201): the
  service takes a network too (check what `ip` accepts and say so in `json_schema`).
- The user pass revokes its own token (log out everywhere, password change), after which
  routes answer only 401: several bearer tokens, or these routes fuzzed last.

Usage: tools/schemathesis_check.py [path/to/portico] [--max-time SECONDS]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SCHEMATHESIS = "4.32.5"
ADMIN_KEY = "schemathesis-admin-key-0123456789abcdef"
PASSWORD = "correct horse battery staple"

# Operations excluded from fuzzing, each with its reason. Everything else is fuzzed with every
# check.
EXCLUDED = [
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_schemathesis() -> str:
    exe = shutil.which("schemathesis")
    if exe:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        if SCHEMATHESIS in version:
            return exe
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--root-user-action=ignore", f"schemathesis=={SCHEMATHESIS}"], check=True)
    return shutil.which("schemathesis") or "schemathesis"


def post(url, body, headers=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("binary", nargs="?", default="target/debug/portico")
    parser.add_argument("--max-time", type=int, default=150,
                        help="schemathesis's time budget (s), shared by the passes")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    exe = ensure_schemathesis()

    workdir = tempfile.mkdtemp(prefix="portico-schemathesis-")
    edge = free_port()
    env = dict(os.environ, EDGE_ADDR=f"127.0.0.1:{edge}", AUTH_ADDR="127.0.0.1:0",
               CONTENT_ADDR="127.0.0.1:0", CHAT_ADDR="127.0.0.1:0", RATELIMIT_ADDR="127.0.0.1:0",
               DATABASE_URL=f"sqlite://{workdir}/portico.db?mode=rwc", ADMIN_API_KEY=ADMIN_KEY,
               RATE_LIMIT_GLOBAL_MAX="1000000", RATE_LIMIT_AUTH_MAX="1000000",
               RATE_LIMIT_CAPACITY="1000000", RATE_LIMIT_REFILL_RATE="100000",
               AUTH_PASSWORD_RESET_ACCOUNT_MAX="1000000", RUST_LOG="warn")
    for inherited in ("REDIS_URL", "RATE_LIMIT_REDIS_URL", "JWT_SIGNING_KEY_FILE", "LLM_BASE_URL",
                      "LLM_PROVIDERS_FILE", "METRICS_GUARD", "CORS_ORIGINS"):
        env.pop(inherited, None)
    log = open(os.path.join(workdir, "portico.log"), "wb")
    server = subprocess.Popen([binary, "serve"], env=env, cwd=workdir, stdout=log, stderr=log)

    def stop(*_):
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(143)))
    try:
        base = f"http://127.0.0.1:{edge}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            print("schemathesis_check: portico did not become ready", file=sys.stderr)
            return 1
        account = {"email": "fuzz@example.com", "password": PASSWORD}
        post(f"{base}/api/v1/auth/register", account)
        token = post(f"{base}/api/v1/auth/login", account)["accessToken"]

        # Two passes, because a credential changes what a request means: with X-Admin-Key
        # the routes that act on "the caller's own" account need `user` (there is no caller
        # account), so the user routes are fuzzed with the bearer token of the account
        # registered above and the admin routes (/api/v1/admin/...) with X-Admin-Key.
        passes = [("user", ["-H", f"Authorization: Bearer {token}",
                            "--exclude-path-regex", "^/api/v1/admin/"]),
                  ("admin", ["-H", f"X-Admin-Key: {ADMIN_KEY}",
                             "--include-path-regex", "^/api/v1/admin/"])]
        worst = 0
        for name, extra in passes:
            command = [exe, "run", f"{base}/api/openapi.json", "--checks", "all",
                       "--max-time", str(max(1, args.max_time // len(passes))),
                       "--workers", "2", "--no-color", "--request-timeout", "10",
                       "--generation-database", "none", "--report", "ndjson",
                       "--report-dir", os.path.join(workdir, f"report-{name}"), *extra]
            if args.seed is not None:
                command += ["--seed", str(args.seed)]
            for kind, value, _reason in EXCLUDED:
                command += [f"--exclude-{kind}", value]
            shown = [c.split(":")[0] + ": ***" if ("Bearer" in c or ADMIN_KEY in c) else c
                     for c in command]
            print(f"schemathesis_check: {name} pass:", " ".join(shown), flush=True)
            started = time.monotonic()
            code = subprocess.run(command, cwd=workdir).returncode
            print(f"schemathesis_check: {name} pass: schemathesis exited {code} after "
                  f"{time.monotonic() - started:.0f}s", flush=True)
            worst = worst or code
        if worst:
            print(f"schemathesis_check: portico's log: {workdir}/portico.log", file=sys.stderr)
        return worst
    finally:
        stop()
        log.close()


if __name__ == "__main__":
    sys.exit(main())

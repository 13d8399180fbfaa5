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

The document says what each field accepts (the protos' `portico.api.v1.schema` options, the
hooks' own body schemas), so every check runs on every operation. Where the contract answers a
schema-valid request with a 4xx on purpose, ALLOWED adds that status to the statuses
positive_data_acceptance takes for that operation alone, with the reason.

Three passes, because a credential changes what a request means: the user routes with the
bearer token of an account registered here, the admin routes (/api/v1/admin/...) with
X-Admin-Key, and last, with a token of their own, the routes that end the caller's sessions
(after which the user pass's token would only get 401s).

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

# What the two data checks take by default (schemathesis's own lists), and what Portico adds
# everywhere: a body over the edge's 1 MiB limit is refused with 413, not 400.
POSITIVE = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
NEGATIVE = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
            "5xx"]

# (method, path, check, statuses that check also takes for this operation, why).
ALLOWED = [
    ("POST", "/api/v1/auth/verify-email", "positive_data_acceptance", ["400"],
     "a token this service did not issue is INVALID_ARGUMENT by contract; a fuzzer cannot "
     "know a mailed one"),
    ("POST", "/api/v1/auth/password-reset/confirm", "positive_data_acceptance", ["400"],
     "likewise: an unknown reset token is INVALID_ARGUMENT"),
    ("PUT", "/api/v1/admin/content/{slug}", "positive_data_acceptance", ["412", "428"],
     "a write names the version it replaces (If-Match, or `version`); a fuzzer cannot know "
     "the current one, so a stale or missing precondition is 412 or 428 (RFC 9110)"),
    ("PUT", "/api/v1/admin/content/{slug}", "negative_data_rejection", ["412"],
     "the precondition is checked before the fields: a stale one is 412 whatever the body"),
    ("POST", "/api/v1/api-keys", "positive_data_acceptance", ["400"],
     "an account holds at most 100 live keys (FAILED_PRECONDITION, 400, by contract): a run "
     "creates more than that for its one account, and a key ends only by revocation or expiry"),
    ("GET", "/api/v1/admin/usage", "positive_data_acceptance", ["400"],
     "`user`, `key` or both: OpenAPI cannot say that one of two query parameters is needed"),
]

# The routes that end the caller's own sessions: fuzzed last, with a token of their own.
ENDS_SESSIONS = "^/api/v1/auth/sessions$"


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
        last_token = post(f"{base}/api/v1/auth/login", account)["accessToken"]
        config = os.path.join(workdir, "schemathesis.toml")
        with open(config, "w") as out:
            out.write(f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(NEGATIVE)}\n\n")
            operations = {}
            for method, path, check, statuses, _why in ALLOWED:
                default = POSITIVE if check == "positive_data_acceptance" else NEGATIVE
                operations.setdefault((method, path), []).append(
                    f"checks.{check}.expected-statuses = {json.dumps(default + statuses)}")
            for (method, path), lines in operations.items():
                out.write(f"[[operations]]\ninclude-method = {json.dumps(method)}\n"
                          f"include-path = {json.dumps(path)}\n" + "\n".join(lines) + "\n\n")
        passes = [("user", ["-H", f"Authorization: Bearer {token}",
                            # One regex: a second --exclude-path-regex replaces the first.
                            "--exclude-path-regex", f"^/api/v1/admin/|{ENDS_SESSIONS}",
                            # DELETE /api/v1/api-keys/{id} revokes a key, whose record its
                            # owner still reads (`revokedAt` set) for audit, by contract; the
                            # user pass's other DELETEs end the account or a session, after
                            # which reads are 401 or list reads. (A per-operation `enabled =
                            # false` does not reach the stateful phase in 4.32.5.)
                            "--exclude-checks", "use_after_free"]),
                  ("admin", ["-H", f"X-Admin-Key: {ADMIN_KEY}",
                             "--include-path-regex", "^/api/v1/admin/"]),
                  ("last", ["-H", f"Authorization: Bearer {last_token}",
                            "--include-path-regex", ENDS_SESSIONS])]
        # The budget: the user and admin passes share it; the last pass has one operation.
        budgets = {"user": max(1, args.max_time * 9 // 20), "admin": max(1, args.max_time * 9 // 20),
                   "last": max(1, args.max_time // 10)}
        worst = 0
        for name, extra in passes:
            command = [exe, "--config-file", config, "run", f"{base}/api/openapi.json",
                       "--checks", "all", "--max-time", str(budgets[name]),
                       # One worker: with two, hypothesis (describing a draw with ast.parse)
                       # now and then dies of CPython 3.11's spurious "AST constructor recursion
                       # depth mismatch" under threads (python/cpython#106905), an error that
                       # fails the run without a finding.
                       "--workers", "1", "--no-color", "--request-timeout", "10",
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

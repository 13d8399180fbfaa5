#!/usr/bin/env python3
"""Checks what operators' own tools read from Portico, against a live `portico serve`:

- gRPC error details decoded by Python's `grpcio-status`: a lockout's RESOURCE_EXHAUSTED carries
  google.rpc.RetryInfo and ErrorInfo; a content create, a chat completion and an auth Register
  with several bad fields each carry a google.rpc.BadRequest naming every one;
- `rate_limit_exceeded_total` counts one refusal per 429 response, even when several policies
  refuse the same request.

It starts its own `portico serve` (the binary given, default target/debug/portico) on free ports
with a fresh SQLite file, and stops it. Requests are encoded by hand (two string fields), so no
generated stubs are needed. Needs grpcio and grpcio-status (tools/requirements.txt).

Usage: tools/error_details_check.py [path/to/portico]
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ADMIN_KEY = "error-details-check-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def field(number: int, value) -> bytes:
    """One protobuf field: a string (wire type 2) or a varint (wire type 0)."""
    if isinstance(value, int):
        return bytes([number << 3]) + varint(value)
    data = value.encode()
    return bytes([(number << 3) | 2]) + varint(len(data)) + data


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def details(error: grpc.RpcError) -> dict:
    """The google.rpc details of `error`, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin on {error.code()}: {error.details()}"
    found = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.RetryInfo, error_details_pb2.ErrorInfo,
                     error_details_pb2.BadRequest):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found[kind.__name__] = message
    return found


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/portico")
    workdir = tempfile.mkdtemp(prefix="portico-details-")
    edge, auth, content, chat = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, EDGE_ADDR=f"127.0.0.1:{edge}", AUTH_ADDR=f"127.0.0.1:{auth}",
               CONTENT_ADDR=f"127.0.0.1:{content}", CHAT_ADDR=f"127.0.0.1:{chat}",
               RATELIMIT_ADDR="127.0.0.1:0", DATABASE_URL=f"sqlite://{workdir}/portico.db?mode=rwc",
               ADMIN_API_KEY=ADMIN_KEY, AUTH_LOGIN_MAX_ATTEMPTS="3",
               # Two policies that both refuse the same login requests.
               RATE_LIMIT_AUTH_MAX="4", RATE_LIMIT_GLOBAL_MAX="6", RATE_LIMIT_GLOBAL_WINDOW="60s",
               RUST_LOG="warn")
    for inherited in ("REDIS_URL", "JWT_SIGNING_KEY_FILE", "METRICS_GUARD", "LLM_PROVIDERS_FILE"):
        env.pop(inherited, None)
    server = subprocess.Popen([binary, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{edge}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            print("portico did not become ready", file=sys.stderr)
            return 1

        # A lockout, straight at the auth service: RetryInfo and ErrorInfo.
        with grpc.insecure_channel(f"127.0.0.1:{auth}") as channel:
            login = channel.unary_unary("/portico.auth.v1.AuthService/Login")
            request = field(1, "locked@example.com") + field(2, "wrong password")
            code = None
            for _ in range(10):
                try:
                    login(request, timeout=10)
                except grpc.RpcError as error:
                    code = error.code()
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        found = details(error)
                        retry = found["RetryInfo"].retry_delay
                        assert retry.seconds > 0, retry
                        assert found["ErrorInfo"].reason == "LOGIN_LOCKED_OUT", found["ErrorInfo"]
                        assert found["ErrorInfo"].domain == "portico.dev", found["ErrorInfo"]
                        print(f"ok: lockout carries RetryInfo ({retry.seconds} s) and ErrorInfo")
                        break
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"never locked out: {code}"

        # Several bad fields at once: every one in the BadRequest.
        with grpc.insecure_channel(f"127.0.0.1:{content}") as channel:
            create = channel.unary_unary("/portico.content.v1.ContentService/CreateContent")
            request = (field(1, "bad-fields") + field(2, " ") + field(4, "ok")
                       + field(4, "x" * 200) + field(5, 99))
            try:
                create(request, metadata=(("x-admin-key", ADMIN_KEY),), timeout=10)
                raise AssertionError("a create with bad fields succeeded")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code()
                violations = [v.field for v in details(error)["BadRequest"].field_violations]
                assert len(violations) >= 3 and "title" in violations and "status" in violations, \
                    violations
                print(f"ok: BadRequest names every bad field: {violations}")

        # A chat completion (the OpenAI JSON, to the built-in echo provider) with three bad
        # fields: one per field, with its path, in the order of the request.
        with grpc.insecure_channel(f"127.0.0.1:{chat}") as channel:
            complete = channel.unary_unary("/portico.chat.v1.ChatService/Complete")
            conversation = {"messages": [{"role": "user", "content": "fine"},
                                         {"role": "robot", "content": 42}],
                            "temperature": 3}
            try:
                complete(field(7, json.dumps(conversation)),
                         metadata=(("x-admin-key", ADMIN_KEY),), timeout=10)
                raise AssertionError("a completion with bad fields succeeded")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, \
                    (error.code(), error.details())
                found = details(error)
                violations = [v.field for v in found["BadRequest"].field_violations]
                assert violations == ["messages[1].role", "messages[1].content", "temperature"], \
                    violations
                assert found["ErrorInfo"].reason == "INVALID_FIELDS", found["ErrorInfo"]
                print(f"ok: chat BadRequest names every bad field: {violations}")

        # Register with a bad address and a bad password: both reported, in one answer.
        with grpc.insecure_channel(f"127.0.0.1:{auth}") as channel:
            register = channel.unary_unary("/portico.auth.v1.AuthService/Register")
            try:
                register(field(1, "not-an-address") + field(2, "short"), timeout=10)
                raise AssertionError("a register with bad fields succeeded")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, \
                    (error.code(), error.details())
                violations = [v.field for v in details(error)["BadRequest"].field_violations]
                assert violations == ["email", "password"], violations
                print(f"ok: Register BadRequest names every bad field: {violations}")

        # One refusal counted per 429 response, with the auth and global policies both refusing.
        # (A new address each time, so no lockout's 429 mixes in.)
        refused = 0
        for n in range(12):
            if post(f"{base}/api/v1/auth/login",
                    {"email": f"flood{n}@example.com", "password": "wrong password"}) == 429:
                refused += 1
        assert refused > 0, "the flood was never refused"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        counted = sum(float(v) for v in re.findall(r"^rate_limit_exceeded_total\{[^}]*\} (\S+)$",
                                                   text, re.MULTILINE))
        assert counted == refused, f"{refused} responses were 429, the counter says {counted}"
        print(f"ok: rate_limit_exceeded_total counted {int(counted)} refusals for {refused} 429s")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks Portico's /v1/chat/completions with the official `openai` Python SDK: a whole answer,
a stream with its usage chunk, and a stream whose provider fails mid-answer (the SDK must raise,
not return a truncated answer as complete). The SDK's api_key is a Portico access token.

It starts its own fake OpenAI-compatible provider and its own `portico serve` (the binary given,
default target/debug/portico) on free ports, and stops both. Needs `pip install openai`.

Usage: tools/openai_sdk_check.py [path/to/portico]
"""
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunk(content, finish=None, role=None):
    delta = {"content": content}
    if role:
        delta["role"] = role
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class Fake(http.server.BaseHTTPRequestHandler):
    """Answers with the last user message; "break" streams a word, then an error event."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = body["messages"][-1]["content"]
        words = text.split()
        if not body.get("stream"):
            answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(chunk("", role="assistant"))
        if text == "break":
            self.wfile.write(chunk("partial"))
            self.wfile.write(b'data: {"error": {"message": "fake overloaded"}}\n\n')
            self.wfile.flush()
            return
        for i, word in enumerate(words):
            self.wfile.write(chunk(word if i == 0 else " " + word))
        self.wfile.write(chunk("", finish="stop"))
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
                 "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/portico")
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="portico-sdk-")
    providers = os.path.join(workdir, "providers.yaml")
    with open(providers, "w") as f:
        f.write(f"providers:\n  - name: fake\n    base_url: http://127.0.0.1:{fake.server_port}/v1\n    model: fake\n")
    edge = free_port()
    env = dict(os.environ, EDGE_ADDR=f"127.0.0.1:{edge}", AUTH_ADDR="127.0.0.1:0", CONTENT_ADDR="127.0.0.1:0",
               CHAT_ADDR="127.0.0.1:0", RATELIMIT_ADDR="127.0.0.1:0", LLM_PROVIDERS_FILE=providers,
               RATE_LIMIT_CAPACITY="1000", DATABASE_URL=f"sqlite://{workdir}/portico.db?mode=rwc",
               RUST_LOG="warn")
    for inherited in ("REDIS_URL", "JWT_SIGNING_KEY_FILE", "LLM_BASE_URL"):
        env.pop(inherited, None)
    server = subprocess.Popen([binary, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{edge}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            print("portico did not become ready", file=sys.stderr)
            return 1
        # The SDK's api_key is sent as the bearer token: a Portico access token.
        account = json.dumps({"email": "sdk@example.com", "password": "correct horse battery staple"}).encode()
        for path in ("register", "login"):
            request = urllib.request.Request(f"{base}/api/v1/auth/{path}", data=account,
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                tokens = json.load(response)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=tokens["accessToken"], max_retries=0)
        messages = [{"role": "user", "content": "hello from the sdk"}]

        whole = client.chat.completions.create(model="fake", messages=messages)
        assert whole.choices[0].message.content == "hello from the sdk", whole
        assert whole.choices[0].finish_reason == "stop", whole
        assert whole.usage.total_tokens == 9, whole.usage

        text, usage, finish = "", None, None
        for part in client.chat.completions.create(model="fake", messages=messages, stream=True,
                                                   stream_options={"include_usage": True}):
            if part.choices:
                text += part.choices[0].delta.content or ""
                finish = part.choices[0].finish_reason or finish
            if part.usage:
                usage = part.usage
        assert text == "hello from the sdk", text
        assert finish == "stop", finish
        assert usage is not None and usage.completion_tokens == 4, usage

        try:
            got = "".join(p.choices[0].delta.content or "" for p in client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "break"}], stream=True) if p.choices)
            print(f"a stream that failed mid-answer ended as a success: {got!r}", file=sys.stderr)
            return 1
        except openai.APIError as error:
            assert "fake overloaded" in str(error), error
        print("openai SDK check: ok (whole answer, stream with usage, mid-stream failure raises)")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)
        fake.shutdown()


if __name__ == "__main__":
    sys.exit(main())

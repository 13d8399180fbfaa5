#!/usr/bin/env python3
"""Checks Portico's OpenAI routes with the official `openai` Python SDK: a whole answer, a stream
with its usage chunk, a stream whose provider fails mid-answer (the SDK must raise, not return a
truncated answer as complete), a tool-call round trip (assistant tool_calls -> tool message ->
final answer) streamed and not against both a real HTTP provider and the built-in echo,
models.list()/retrieve(), embeddings.create() (the SDK's default base64 and floats), and the
exception class of each error: BadRequestError 400, AuthenticationError 401, NotFoundError 404
(model_not_found), RateLimitError 429, APIStatusError 502 and 504. The SDK's api_key is a
Portico access token, then a Portico API key (`pk_…`): answers and streams with it, its token
budget running out (RateLimitError), its usage, and its revocation (AuthenticationError within a
second).

It starts its own fake OpenAI-compatible provider and its own `portico serve` (the binary given,
default target/debug/portico) on free ports, and stops both. Needs `pip install openai`.

Usage: tools/openai_sdk_check.py [path/to/portico]
"""
import http.server
import json
import os
import shutil
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
    delta = {} if content is None else {"content": content}
    if role:
        delta["role"] = role
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def send_json(handler, value):
    data = json.dumps(value).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Fake(http.server.BaseHTTPRequestHandler):
    """Answers with the last user message; "break" streams a word, then an error event; with
    tools and a user message last, calls the first tool with {"city": <text>}; after a tool
    message, answers with its content; model "stall" never answers; embeddings are 4 floats."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body.get("model") == "stall":
            time.sleep(5)
            return
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.5, 0.25, float(len(text))]}
                    for i, text in enumerate(inputs)]
            send_json(self, {"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
            return
        last = body["messages"][-1]
        text = last["content"]
        words = text.split()
        tool_call = None
        if body.get("tools") and last["role"] == "user":
            name = body["tools"][0]["function"]["name"]
            tool_call = {"id": "call_fake1", "type": "function",
                         "function": {"name": name, "arguments": json.dumps({"city": text})}}
        if not body.get("stream"):
            if tool_call:
                message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": text}
                finish = "stop"
            send_json(self, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake",
                             "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        if tool_call:
            arguments = tool_call["function"]["arguments"]
            first = dict(tool_call, index=0, function={"name": tool_call["function"]["name"], "arguments": ""})
            deltas = [{"role": "assistant", "content": None, "tool_calls": [first]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 5]}}]}
                       for i in range(0, len(arguments), 5)]
            for delta in deltas:
                event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(chunk(None, finish="tool_calls"))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            return
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


def tool_round_trip(client, model, stream):
    """The assistant asks for a tool, the tool's result goes back, the assistant answers."""
    messages = [{"role": "user", "content": "Oslo"}]
    if stream:
        calls = {}
        finish = None
        for part in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
            for choice in part.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
        assert finish == "tool_calls", finish
        assert len(calls) == 1, calls
        call = calls[0]
        tool_calls = [{"id": call["id"], "type": "function",
                       "function": {"name": call["name"], "arguments": call["arguments"]}}]
    else:
        asked = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="auto")
        choice = asked.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        tool_calls = [c.model_dump() for c in choice.message.tool_calls]
    call = tool_calls[0]
    assert call["function"]["name"] == "weather", call
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}, call
    messages += [{"role": "assistant", "content": None, "tool_calls": tool_calls},
                 {"role": "tool", "tool_call_id": call["id"], "content": "rain, 12 C"}]
    if stream:
        text = "".join(p.choices[0].delta.content or "" for p in client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, stream=True) if p.choices)
    else:
        text = client.chat.completions.create(model=model, messages=messages, tools=TOOLS).choices[0].message.content
    assert text == "rain, 12 C", (model, stream, text)


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/portico")
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="portico-sdk-")
    providers = os.path.join(workdir, "providers.yaml")
    closed = free_port()
    with open(providers, "w") as f:
        f.write(f"""providers:
  - name: fake
    base_url: http://127.0.0.1:{fake.server_port}/v1
    model: fake
  - name: echo
    base_url: builtin:echo
    model: echo
  - name: down
    base_url: http://127.0.0.1:{closed}/v1
  - name: slow
    base_url: http://127.0.0.1:{fake.server_port}/v1
    timeout: 300ms
models:
  - name: broken
    deployments: [{{provider: down, model: anything}}]
  - name: stalled
    deployments: [{{provider: slow, model: stall}}]
default_model: fake
""")
    edge = free_port()
    env = dict(os.environ, EDGE_ADDR=f"127.0.0.1:{edge}", AUTH_ADDR="127.0.0.1:0", CONTENT_ADDR="127.0.0.1:0",
               CHAT_ADDR="127.0.0.1:0", RATELIMIT_ADDR="127.0.0.1:0", LLM_PROVIDERS_FILE=providers,
               RATE_LIMIT_CAPACITY="40", RATE_LIMIT_REFILL_RATE="0.001", RATE_LIMIT_GLOBAL_MAX="100000",
               LLM_CB_FAILURE_THRESHOLD="1000", DATABASE_URL=f"sqlite://{workdir}/portico.db?mode=rwc",
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
        def token(email):
            account = json.dumps({"email": email, "password": "correct horse battery staple"}).encode()
            for path in ("register", "login"):
                request = urllib.request.Request(f"{base}/api/v1/auth/{path}", data=account,
                                                 headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    tokens = json.load(response)
            return tokens["accessToken"]

        client = openai.OpenAI(base_url=f"{base}/v1", api_key=token("sdk@example.com"), max_retries=0)
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
            # A stable message: the provider's own text stays in the logs.
            assert "failed mid-answer" in str(error), error

        checked = ["whole answer", "stream with usage", "mid-stream failure raises"]
        for model in ("fake", "echo"):
            for stream in (False, True):
                tool_round_trip(client, model, stream)
                checked.append(f"tool round trip ({model}, stream={stream})")

        ids = [m.id for m in client.models.list()]
        assert {"fake", "echo", "broken", "stalled"} <= set(ids), ids
        assert client.models.retrieve("echo").id == "echo"
        checked.append("models.list/retrieve")

        vectors = client.embeddings.create(model="echo", input=["hello", "world"])
        assert [d.index for d in vectors.data] == [0, 1], vectors
        assert len(vectors.data[0].embedding) == 16, vectors.data[0]
        again = client.embeddings.create(model="echo", input="hello", encoding_format="float", dimensions=16)
        assert all(abs(a - b) < 1e-6 for a, b in zip(again.data[0].embedding, vectors.data[0].embedding))
        fake_vectors = client.embeddings.create(model="fake", input="abc", encoding_format="float")
        assert fake_vectors.data[0].embedding == [0.5, -0.5, 0.25, 3.0], fake_vectors
        assert vectors.usage.prompt_tokens == 2, vectors.usage
        checked.append("embeddings (base64 and float)")

        def raises(kind, call, status=None, code=None):
            try:
                call()
            except kind as error:
                assert status is None or error.status_code == status, (kind, error.status_code)
                assert code is None or error.code == code, (kind, error.code, error.body)
                checked.append(f"{kind.__name__} {error.status_code}")
                return
            raise AssertionError(f"expected {kind.__name__}")

        hello = [{"role": "user", "content": "hi"}]
        raises(openai.BadRequestError, lambda: client.chat.completions.create(
            model="fake", messages=hello, temperature=5), 400)
        stranger = openai.OpenAI(base_url=f"{base}/v1", api_key="not-a-token", max_retries=0)
        raises(openai.AuthenticationError, lambda: stranger.chat.completions.create(model="fake", messages=hello), 401)
        raises(openai.NotFoundError, lambda: client.chat.completions.create(model="gpt-9", messages=hello),
               404, "model_not_found")
        raises(openai.NotFoundError, lambda: client.embeddings.create(model="gpt-9", input="x"), 404, "model_not_found")
        raises(openai.APIStatusError, lambda: client.chat.completions.create(model="broken", messages=hello), 502)
        raises(openai.APIStatusError, lambda: client.chat.completions.create(model="stalled", messages=hello), 504)
        limited_token = token("limited@example.com")
        limited = openai.OpenAI(base_url=f"{base}/v1", api_key=limited_token, max_retries=0)

        def exhaust():
            for _ in range(100):
                limited.chat.completions.create(model="echo", messages=hello)
        raises(openai.RateLimitError, exhaust, 429, "rate_limit_exceeded")

        # API keys (issue 14): the SDK with api_key="pk_…", a token budget, revocation.
        owner = token("keys@example.com")

        def rest(method, path, body=None, bearer=owner, headers=None):
            request = urllib.request.Request(f"{base}{path}", method=method,
                                             data=None if body is None else json.dumps(body).encode(),
                                             headers={"content-type": "application/json", **(headers or {}),
                                                      **({"authorization": f"Bearer {bearer}"} if bearer else {})})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, (json.load(response) if response.status != 204 else None)

        status, created = rest("POST", "/api/v1/api-keys",
                               {"name": "sdk check", "scopes": ["chat"], "tokenBudget": 60, "budgetWindow": "1d"})
        assert status == 201 and created["secret"].startswith("pk_"), created
        secret, key_id = created["secret"], created["key"]["id"]
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
        answer = keyed.chat.completions.create(model="fake", messages=messages)
        assert answer.choices[0].message.content == "hello from the sdk", answer
        streamed = "".join(p.choices[0].delta.content or "" for p in keyed.chat.completions.create(
            model="fake", messages=messages, stream=True) if p.choices)
        assert streamed == "hello from the sdk", streamed
        status, _ = rest("GET", "/v1/models", bearer=None, headers={"x-api-key": secret})
        assert status == 200
        checked.append("api_key=pk_… (whole, stream, x-api-key)")

        def spend():
            for _ in range(20):
                keyed.chat.completions.create(model="fake", messages=messages)
        raises(openai.RateLimitError, spend, 429)
        _, usage = rest("GET", f"/api/v1/api-keys/{key_id}/usage")
        assert usage["budget"]["usedTokens"] == usage["totals"]["totalTokens"] >= 60, usage
        assert usage["rows"][0]["model"] == "fake", usage
        checked.append("token budget 429 and usage")

        status, _ = rest("DELETE", f"/api/v1/api-keys/{key_id}")
        assert status == 204
        revoked_at = time.monotonic()
        while True:
            try:
                keyed.models.list()
            except openai.AuthenticationError:
                break
            assert time.monotonic() - revoked_at < 1.0, "a revoked key was accepted for a second"
        checked.append("revoked key refused within 1 s")
        print("openai SDK check: ok (" + ", ".join(checked) + ")")

        # The Node SDK too, when `node` finds it (NODE_PATH=…/node_modules after `npm install openai`).
        node = subprocess.run(["node", "-e", "require.resolve('openai')"], capture_output=True) \
            if shutil.which("node") else None
        if node is None or node.returncode != 0:
            print("openai Node SDK check: skipped (node cannot require('openai'))")
            return 0
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_node_check.cjs")
        return subprocess.run(["node", script, base, client.api_key, limited_token], timeout=120).returncode
    finally:
        server.terminate()
        server.wait(timeout=30)
        fake.shutdown()


if __name__ == "__main__":
    sys.exit(main())

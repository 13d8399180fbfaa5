#!/usr/bin/env bash
# Instructions the edge spends per request, counted by valgrind's callgrind: repeatable for the
# same binary and inputs whatever else the machine is doing, unlike throughput on shared cores.
#
#   tools/instructions_per_request.sh target/release/portico /healthz [seconds]
#
# Runs `portico serve` on the README's defaults (SQLite in a temporary directory, default
# logging) under callgrind, warms it up, counts an idle period and then a load period of the
# same length (portico-bench, 4 connections), and prints (load - idle) / requests.
set -euo pipefail
bin=$(realpath "$1"); path=$2; seconds=${3:-6}
root=$(cd "$(dirname "$0")/.." && pwd)
bench="$root/target/release/portico-bench"
[ -x "$bench" ] || { echo "build it first: cargo build --release -p portico-bench" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
dir=$(mktemp -d); trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$dir"
env -i PATH="$PATH" EDGE_ADDR="127.0.0.1:$port" AUTH_ADDR=127.0.0.1:0 CONTENT_ADDR=127.0.0.1:0 \
    CHAT_ADDR=127.0.0.1:0 RATELIMIT_ADDR=127.0.0.1:0 RATE_LIMIT_GLOBAL_MAX=10000000 \
    RATE_LIMIT_GLOBAL_WINDOW=1s RATE_LIMIT_AUTH_MAX=10000000 RATE_LIMIT_CAPACITY=10000000 \
    RATE_LIMIT_REFILL_RATE=1000000 \
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" serve >portico.log 2>&1 &
pid=$!
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat portico.log >&2; exit 1; }
    sleep 0.5
done
url="http://127.0.0.1:$port$path"
"$bench" http --url "$url" --concurrency 4 --duration 2 --warmup 0 >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
sleep "$seconds"
callgrind_control -d "$pid" >/dev/null 2>&1
out=$("$bench" http --url "$url" --concurrency 4 --duration "$seconds" --warmup 0)
callgrind_control -d "$pid" >/dev/null 2>&1
requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$out")
idle=$(awk '/^summary/ {print $2}' "$dir/cg.out.1")
load=$(awk '/^summary/ {print $2}' "$dir/cg.out.2")
echo "{\"path\":\"$path\",\"requests\":$requests,\"idle_instructions\":$idle,\"load_instructions\":$load,\"instructions_per_request\":$(( (load - idle) / requests ))}"

#!/usr/bin/env bash
# End-to-end benchmark of the MCP gateway: CALLS allowed tools/call
# requests, one at a time, to @modelcontextprotocol/server-everything's
# `echo` over streamable HTTP, first straight to it, then through gavel's
# /mcp (same upstream, same client, same run). Prints p50/p90/p99 and the
# latency gavel adds.
#
#   bench/mcp.sh                 # 10,000 calls each
#   CALLS=2000 bench/mcp.sh      # shorter
#   PERF=/tmp/mcp.perf bench/mcp.sh   # and a CPU profile of gavel (perf)
#
# The client is crates/surface/mcp/examples/mcp_latency.rs (rmcp).
# BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-10000}
scripts/setup
cargo build --release --locked -p gavel >&2
cargo build --release --locked -p gavel-mcp --example mcp_latency >&2
BIN=target/release/gavel
CLIENT=target/release/examples/mcp_latency
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

up_port=$(free_port)
PORT=$up_port .tools/npm/node_modules/.bin/mcp-server-everything streamableHttp >"$work/everything.log" 2>&1 &
pids+=($!)
wait_port "$up_port"

api_port=$(free_port)
mkdir -p "$work/policies"
echo '@id("echo") permit(principal, action == Action::"mcp.call", resource) when { context.tool == "echo" };' >"$work/policies/bench.cedar"
cat >"$work/gavel.toml" <<TOML
data_dir = "data"
[server]
listen = "127.0.0.1:$api_port"
[policy]
dir = "policies"
[[resources.mcp]]
name = "everything"
url = "http://127.0.0.1:$up_port/mcp"
TOML
token=$("$BIN" -c "$work/gavel.toml" agent create bench --owner bench@example.com | tail -1)
RUST_LOG=warn "$BIN" -c "$work/gavel.toml" serve >"$work/gavel.log" 2>&1 &
gavel_pid=$!
pids+=($gavel_pid)
wait_port "$api_port"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$api_port/readyz" | grep -q '"up":true' && break
  sleep 0.2
done

args='{"message":"benchmark"}'
direct=$("$CLIENT" "http://127.0.0.1:$up_port/mcp" echo "$args" "$CALLS")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gavel_pid/stat"; }
before=$(cpu_ticks)
if [ -n "${PERF:-}" ]; then
  # PERF=FILE: a CPU profile of gavel during its calls (perf report -i FILE).
  perf record -q -F 999 -g -p "$gavel_pid" -o "$PERF" >/dev/null 2>&1 &
  perf_pid=$!
fi
gavel=$(MCP_TOKEN=$token "$CLIENT" "http://127.0.0.1:$api_port/mcp" everything__echo "$args" "$CALLS")
after=$(cpu_ticks)
if [ -n "${PERF:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
ticks_per_s=$(getconf CLK_TCK)
metrics=$(curl -fsS "http://127.0.0.1:$api_port/metrics")
gate_sum=$(echo "$metrics" | awk '/^gavel_gate_check_seconds_sum/ {print $2}')
gate_count=$(echo "$metrics" | awk '/^gavel_gate_check_seconds_count/ {print $2}')
python3 - "$direct" "$gavel" "$gate_sum" "$gate_count" "$((after - before))" "$ticks_per_s" <<'PY'
import json, sys
d, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'':14}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}{'calls/s':>10}")
for name, r in (("direct", d), ("through gavel", g)):
    print(f"{name:14}{r['p50_us']:>10.0f}{r['p90_us']:>10.0f}{r['p99_us']:>10.0f}{r['calls_per_s']:>10.0f}")
print(f"added by gavel: p50 {g['p50_us'] - d['p50_us']:.0f} µs (target < 500), "
      f"p99 {g['p99_us'] - d['p99_us']:.0f} µs (target < 2000); "
      f"throughput {g['calls_per_s'] / d['calls_per_s']:.2f}x direct ({d['calls']} calls each)")
if sys.argv[4] not in ("", "0"):
    print(f"of which Gate::check (policy + durable audit record): mean "
          f"{float(sys.argv[3]) / float(sys.argv[4]) * 1e6:.0f} µs over {int(float(sys.argv[4]))} checks")
cpu = int(sys.argv[5]) / int(sys.argv[6])
print(f"gavel's CPU: {cpu * 1e6 / (g['calls'] + 200):.0f} µs per call (user + system, warm-up included)")
PY

#!/usr/bin/env bash
# Request creation → first channel delivery (issue target: < 50 ms), for a
# signed webhook, Slack (chat.postMessage) and a Teams Workflows webhook,
# all configured at once on one gateway with the default embedded SQLite.
#
#   bench/channels.sh                # 500 requests
#   REQUESTS=100 bench/channels.sh   # shorter
#
# The receivers and the client are bench/channels.py. BENCHMARKS.md
# records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-500}
scripts/setup
cargo build --release --locked -p gavel >&2
BIN=target/release/gavel
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

api_port=$(free_port) hook_port=$(free_port) slack_port=$(free_port) teams_port=$(free_port)
mkdir -p "$work/policies"
echo '@id("ddl") @approval("group:dba") permit(principal, action == Action::"sql.ddl", resource);' >"$work/policies/bench.cedar"
cat >"$work/gavel.toml" <<TOML
data_dir = "data"
[server]
listen = "127.0.0.1:$api_port"
[policy]
dir = "policies"
[[channels.webhook]]
name = "bench-webhook"
url = "http://127.0.0.1:$hook_port/hook"
secret_env = "BENCH_WEBHOOK_SECRET"
[[channels.slack]]
bot_token_env = "BENCH_SLACK_TOKEN"
signing_secret_env = "BENCH_SLACK_SECRET"
channel = "C1"
api_base = "http://127.0.0.1:$slack_port/api"
[[channels.teams]]
webhook_url_env = "BENCH_TEAMS_URL"
TOML
export BENCH_WEBHOOK_SECRET=bench-webhook-secret-0123456789
export BENCH_SLACK_TOKEN=xoxb-bench BENCH_SLACK_SECRET=bench-slack-secret-0123456789
export BENCH_TEAMS_URL="http://127.0.0.1:$teams_port/workflow"
token=$("$BIN" -c "$work/gavel.toml" agent create bench --owner bench@example.com | tail -1)
RUST_LOG=warn "$BIN" -c "$work/gavel.toml" serve >"$work/gavel.log" 2>&1 &
pids+=($!)
wait_port "$api_port"
python3 bench/channels.py "http://127.0.0.1:$api_port" "$token" "$REQUESTS" "$hook_port" "$slack_port" "$teams_port"
# Time each delivery took inside gavel (queue wait excluded), per channel.
curl -fsS "http://127.0.0.1:$api_port/metrics" | python3 -c '
import re, sys
sums, counts = {}, {}
for line in sys.stdin:
    m = re.match(r"gavel_channel_delivery_seconds_(sum|count)\{channel=\"([^\"]+)\"\} (\S+)", line)
    if m:
        (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
for ch in sorted(sums):
    if counts.get(ch):
        print(f"mean time per delivery inside gavel, {ch}: {sums[ch] / counts[ch] * 1000:.2f} ms over {int(counts[ch])}")
'

#!/usr/bin/env bash
# End-to-end benchmark of the PostgreSQL surface: pgbench -S, simple and
# prepared, straight to PostgreSQL, through gavel and through pgbouncer
# (session mode), all in the same run; then the memory gavel holds for
# 2,000 idle client connections.
#
#   bench/pg.sh                 # 30 s per run, 8 clients, 2 threads
#   DURATION=10 bench/pg.sh     # shorter
#   STORE=postgres bench/pg.sh  # gavel's own store on PostgreSQL (a fresh
#                               # database on the same server) instead of
#                               # the embedded SQLite
#
# Needs the machine's PostgreSQL at 127.0.0.1:5432 (trust auth, database
# `test`); installs pgbouncer (Debian) if missing. Prints TPS, average
# latency and the ratios; BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-2}
IDLE=${IDLE:-2000}
GAVEL_PORT=${GAVEL_PORT:-26432}
BOUNCER_PORT=${BOUNCER_PORT:-26433}
API_PORT=${API_PORT:-28470}
BUFFERED_PORT=${BUFFERED_PORT:-26434}
STORE=${STORE:-sqlite}
STORE_DB=gavel_bench_store_$$

scripts/setup
if ! command -v pgbouncer >/dev/null 2>&1; then
  echo "bench: installing pgbouncer" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pgbouncer >/dev/null
fi
cargo build --release --locked -p gavel >&2
BIN=target/release/gavel

work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
  [ -n "${GAVEL_PID:-}" ] && kill "$GAVEL_PID" 2>/dev/null || true
  [ -n "${BUFFERED_PID:-}" ] && kill "$BUFFERED_PID" 2>/dev/null || true
  [ -f "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  if [ "$STORE" = postgres ]; then
    psql -X -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $STORE_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# gavel: reads and writes allowed, nothing held; the durable audit log on.
mkdir -p "$work/policies"
cat > "$work/policies/bench.cedar" <<'CEDAR'
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("writes") permit(principal, action == Action::"sql.write", resource);
CEDAR
cat > "$work/gavel.toml" <<TOML
data_dir = "data"
[server]
listen = "127.0.0.1:$API_PORT"
[policy]
dir = "policies"
[[resources.postgres]]
name = "bench-db"
listen = "127.0.0.1:$GAVEL_PORT"
upstream = "postgres://postgres@127.0.0.1:5432/test"
TOML
case $STORE in
  sqlite) ;;
  postgres)
    psql -X -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $STORE_DB" >/dev/null
    printf '[storage]\nurl = "postgres://postgres@127.0.0.1:5432/%s"\n' "$STORE_DB" >> "$work/gavel.toml"
    ;;
  *) echo "bench: STORE is sqlite or postgres" >&2; exit 2 ;;
esac
TOKEN=$($BIN agent create bench --owner bench-owner@example.com --config "$work/gavel.toml" | tail -1)
RUST_LOG=warn $BIN serve --config "$work/gavel.toml" >"$work/gavel.log" 2>&1 &
GAVEL_PID=$!
# A second gateway on the same store with audit.read_durability = "buffered".
sed -e "s/127.0.0.1:$API_PORT/127.0.0.1:$((API_PORT + 1))/" \
    -e "s/127.0.0.1:$GAVEL_PORT/127.0.0.1:$BUFFERED_PORT/" \
    -e 's/^data_dir = "data"/data_dir = "data"\n[audit]\nread_durability = "buffered"/' \
    "$work/gavel.toml" > "$work/buffered.toml"
RUST_LOG=warn $BIN serve --config "$work/buffered.toml" >"$work/buffered.log" 2>&1 &
BUFFERED_PID=$!

# pgbouncer, session mode, the same upstream.
cat > "$work/pgbouncer.ini" <<INI
[databases]
test = host=127.0.0.1 port=5432 dbname=test user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = any
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
unix_socket_dir =
INI
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres "$work" 2>/dev/null || true
  pgbouncer -d -u postgres "$work/pgbouncer.ini"
else
  pgbouncer -d "$work/pgbouncer.ini"
fi

for _ in $(seq 1 100); do
  pg_isready -q -h 127.0.0.1 -p $GAVEL_PORT && pg_isready -q -h 127.0.0.1 -p $BUFFERED_PORT \
    && pg_isready -q -h 127.0.0.1 -p $BOUNCER_PORT && break
  sleep 0.1
done
kill -0 "$GAVEL_PID" 2>/dev/null || { echo "bench: gavel did not start:" >&2; cat "$work/gavel.log" >&2; exit 1; }

echo "bench: pgbench -i -s $SCALE" >&2
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p 5432 -U postgres test >/dev/null 2>&1

run() { # target mode -> "tps latency_ms"
  local target=$1 mode=$2 out
  case $target in
    direct) out=$(pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p 5432 -U postgres test 2>&1) ;;
    gavel) out=$(PGPASSWORD=$TOKEN pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p $GAVEL_PORT -U bench test 2>&1) ;;
    buffered) out=$(PGPASSWORD=$TOKEN pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p $BUFFERED_PORT -U bench test 2>&1) ;;
    pgbouncer) out=$(pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p $BOUNCER_PORT -U postgres test 2>&1) ;;
  esac
  local tps lat
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  if [ -z "$tps" ]; then echo "bench: $target $mode failed:" >&2; echo "$out" >&2; exit 1; fi
  echo "$tps $lat"
}

echo
echo "pgbench -S, $CLIENTS clients, $THREADS threads, ${DURATION}s per run, scale $SCALE ($(nproc) cores), gavel's store: $STORE"
printf '%-9s %-10s %12s %12s %14s %14s\n' mode target tps latency_ms vs_direct vs_pgbouncer
for mode in simple prepared; do
  result=$(run direct "$mode") || exit 1; read -r d_tps d_lat <<<"$result"
  result=$(run gavel "$mode") || exit 1; read -r g_tps g_lat <<<"$result"
  result=$(run buffered "$mode") || exit 1; read -r f_tps f_lat <<<"$result"
  result=$(run pgbouncer "$mode") || exit 1; read -r b_tps b_lat <<<"$result"
  printf '%-9s %-10s %12.0f %12.3f %14s %14s\n' "$mode" direct "$d_tps" "$d_lat" 1.00 ""
  printf '%-9s %-10s %12.0f %12.3f %14.2f %14.2f\n' "$mode" gavel "$g_tps" "$g_lat" \
    "$(echo "$g_tps / $d_tps" | bc -l)" "$(echo "$g_tps / $b_tps" | bc -l)"
  printf '%-9s %-10s %12.0f %12.3f %14.2f %14.2f\n' "$mode" gavel-buf "$f_tps" "$f_lat" \
    "$(echo "$f_tps / $d_tps" | bc -l)" "$(echo "$f_tps / $b_tps" | bc -l)"
  printf '%-9s %-10s %12.0f %12.3f %14.2f %14s\n' "$mode" pgbouncer "$b_tps" "$b_lat" \
    "$(echo "$b_tps / $d_tps" | bc -l)" 1.00
done

records=$(curl -s "http://127.0.0.1:$API_PORT/metrics" | sed -n 's/^gavel_audit_records \([0-9]*\).*/\1/p')
echo
echo "audit records written during the runs: ${records:-?} (gateway with durable reads)"
echo "gavel = audit.read_durability \"before_release\" (default); gavel-buf = \"buffered\""

# Memory: idle client connections, each authenticated, none with a query.
rss() { awk '/VmRSS/ {print $2}' "/proc/$GAVEL_PID/status"; }
before=$(rss)
python3 - "$IDLE" "$GAVEL_PORT" "$TOKEN" <<'PY' &
import socket, struct, sys, time
n, port, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def startup():
    body = struct.pack("!I", 196608) + b"user\0bench\0database\0test\0\0"
    return struct.pack("!I", len(body) + 4) + body
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(startup())
    s.recv(9)  # AuthenticationCleartextPassword
    pw = token.encode() + b"\0"
    s.sendall(b"p" + struct.pack("!I", len(pw) + 4) + pw)
    got = b""
    while not got.endswith(b"Z\0\0\0\x05I"):
        got += s.recv(4096)
    conns.append(s)
print("open", flush=True)
time.sleep(30)
PY
IDLE_PID=$!
for _ in $(seq 1 600); do
  open=$(ls /proc/$GAVEL_PID/fd 2>/dev/null | wc -l)
  [ "$open" -ge "$IDLE" ] && break
  sleep 0.1
done
sleep 1
after=$(rss)
kill $IDLE_PID 2>/dev/null || true
echo "memory: gavel RSS $((before / 1024)) MiB before, $((after / 1024)) MiB with $IDLE idle authenticated client connections ($(( (after - before) / IDLE )) KiB each)"

#!/usr/bin/env bash
# Instructions gavel spends per pgbench -S transaction, counted by
# callgrind (repeatable on a noisy machine, unlike time), and where they
# go: gavel runs under valgrind twice, for 1 and for 1 + TX transactions of
# one client, and the difference divided by TX is the per-transaction
# cost; the longer run's inclusive profile shows the stages.
#
#   bench/pg-callgrind.sh                      # 2,000 transactions, simple protocol, buffered reads
#   MODE=prepared DURABILITY=before_release TX=1000 bench/pg-callgrind.sh
#
# Needs valgrind (installed if missing) and the machine's PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
TX=${TX:-2000}
MODE=${MODE:-simple}
DURABILITY=${DURABILITY:-buffered}
PORT=${PORT:-26440}
API_PORT=${API_PORT:-28480}
scripts/setup >&2
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release --locked -p gavel >&2
BIN=$PWD/target/release/gavel
work=$(mktemp -d)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/policies"
echo '@id("reads") permit(principal, action == Action::"sql.read", resource);' > "$work/policies/bench.cedar"
cat > "$work/gavel.toml" <<TOML
data_dir = "data"
[server]
listen = "127.0.0.1:$API_PORT"
[policy]
dir = "policies"
[audit]
read_durability = "$DURABILITY"
[[resources.postgres]]
name = "bench-db"
listen = "127.0.0.1:$PORT"
upstream = "postgres://postgres@127.0.0.1:5432/test"
TOML
TOKEN=$($BIN agent create bench --owner bench-owner@example.com --config "$work/gavel.toml" | tail -1)
pgbench -i -q -s 2 -h 127.0.0.1 -p 5432 -U postgres test >/dev/null 2>&1

count() { # transactions -> instructions (Ir) of the whole gavel process
  local n=$1 out=$work/cg.$1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" serve --config "$work/gavel.toml" >"$work/serve.$n.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
  PGPASSWORD=$TOKEN pgbench -n -S -M "$MODE" -c 1 -t "$n" -h 127.0.0.1 -p "$PORT" -U bench test >"$work/pgbench.$n.log" 2>&1 \
    || { cat "$work/pgbench.$n.log" "$work/serve.$n.log" >&2; exit 1; }
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  callgrind_annotate "$out" 2>/dev/null | sed -n 's/^\([0-9,]*\) (100.0%).*PROGRAM TOTALS.*/\1/p' | tr -d ,
}
base=$(count 1)
full=$(count $((TX + 1)))
per=$(( (full - base) / TX ))
echo "gavel, pgbench -S -M $MODE, one client, read_durability = $DURABILITY"
echo "instructions per transaction: $per  (($full - $base) / $TX)"
echo
echo "inclusive, the $((TX + 1))-transaction run (share of all instructions, startup included):"
callgrind_annotate --inclusive=yes "$work/cg.$((TX + 1))" 2>/dev/null | sed -n '/^Ir/,$p' | head -45 || true
# Stages: inclusive instructions of the functions that are one stage
# each, per transaction (startup is outside them).
echo
echo "per transaction, by stage (inclusive; stages nest where noted):"
annotated=$(callgrind_annotate --inclusive=yes --threshold=100 "$work/cg.$((TX + 1))" 2>/dev/null)
stage() { # label pattern
  local ir
  ir=$(echo "$annotated" | grep -E "$2" | head -1 | awk '{print $1}' | tr -d , || true)
  printf '  %-58s %9s\n' "$1" "$(( ${ir:-0} / (TX + 1) ))"
}
stage "session: a client message, end to end" 'gavel_postgres::session::Session::on_client::\{\{closure'
stage "  admission: Session::admit (gate, policy, decision)" 'gavel_postgres::hold::<impl gavel_postgres::session::Session>::admit::\{\{closure'
stage "    policy: gavel_policy::decide" 'gavel_policy::decide \['
stage "  classification: classify_fresh / shape cache" 'gavel_postgres::session::Session::classify_fresh'
stage "relay: upstream rows back to the client" 'gavel_postgres::session::Session::relay::\{\{closure'
stage "audit writer: group commit (serialise, hash, insert, commit)" 'gavel_store::audit_queue::group_commit::\{\{closure'
stage "  record bytes: leaf_members (serde_json + canonical JSON)" 'gavel_audit::record::leaf_members'
stage "  leaf hash: SHA-256 of the record (software SHA-256 here)" 'gavel_audit::tree::leaf_hash'
stage "  SQLite: executing the insert" 'sqlx_sqlite::connection::execute::ExecuteIter as'
stage "canonical JSON, every use (record and fingerprint)" 'gavel_core::fingerprint::canonical_json \['
stage "SHA-256, every use" 'sha2::sha256::compress256 \['
stage "malloc (every caller)" 'malloc.c:malloc \['
stage "free (every caller)" 'malloc.c:free \['
if [ -n "${KEEP:-}" ]; then cp "$work/cg.$((TX + 1))" "$KEEP"; fi

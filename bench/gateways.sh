#!/usr/bin/env bash
# Several gateways on one PostgreSQL store, measured by the multi-gateway
# tests themselves (crates/cli/tests/gateways.rs) in a release build:
# approval on gateway A -> statement released on gateway B (p50, p99), the
# checkpoint signer's takeover after a kill -9 under 16 agents, and actions
# allowed and refused while the store's PostgreSQL is down.
#
#   bench/gateways.sh
#
# BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup >&2
cargo test --release --locked -p gavel --test gateways -- --nocapture --test-threads=1 2>&1 |
    grep -E '^(approv|16 agents|store restart)|^test |test result'

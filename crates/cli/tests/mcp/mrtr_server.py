"""An MCP tool server of the stateless 2026-07-28 revision, on the official
Python SDK (PyPI `mcp`), whose tool asks its client for a confirmation with
an `input_required` result before it acts: the upstream behind gavel in the
tests of multi-round calls. Over stdio.

`drop_table(table)` answers `input_required` (an elicitation keyed
"confirm", with its own requestState "asked:TABLE") until the client's
retry carries the answer and that state; then it reports what it did.
`allowed_roots()` asks for the client's roots the same way and reports
the ones it was given.

With MODERN_ONLY=1 in its environment it refuses `initialize`: an
upstream that speaks only 2026-07-28.
"""

import os

import mcp_types as t
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("confirming")

if os.environ.get("MODERN_ONLY"):
    from mcp.server.runner import ServerRunner
    from mcp.shared.exceptions import MCPError

    def _refuse_initialize(self, params):
        raise MCPError(-32022, "this server speaks only protocol revision 2026-07-28", {"supported": ["2026-07-28"]})

    ServerRunner._handle_initialize = _refuse_initialize


@app.tool()
async def drop_table(table: str, ctx: Context) -> str | t.InputRequiredResult:
    answer = (ctx.input_responses or {}).get("confirm")
    if answer is None:
        return t.InputRequiredResult(
            result_type="input_required",
            input_requests={
                "confirm": t.ElicitRequest(
                    method="elicitation/create",
                    params=t.ElicitRequestFormParams(
                        message=f"Really drop {table}?",
                        requested_schema={
                            "type": "object",
                            "properties": {"sure": {"type": "boolean"}},
                            "required": ["sure"],
                        },
                    ),
                )
            },
            request_state=f"asked:{table}",
        )
    if ctx.request_state != f"asked:{table}":
        raise ValueError(f"requestState {ctx.request_state!r} does not belong to this call")
    content = answer.get("content") if isinstance(answer, dict) else getattr(answer, "content", None)
    sure = bool((content or {}).get("sure"))
    return f"dropped {table}" if sure else f"kept {table}"


@app.tool()
async def allowed_roots(ctx: Context) -> str | t.InputRequiredResult:
    answer = (ctx.input_responses or {}).get("roots")
    if answer is None:
        return t.InputRequiredResult(
            result_type="input_required",
            input_requests={"roots": t.ListRootsRequest(method="roots/list")},
            request_state="asked:roots",
        )
    roots = answer.get("roots") if isinstance(answer, dict) else getattr(answer, "roots", [])
    uris = [r.get("uri") if isinstance(r, dict) else str(r.uri) for r in roots or []]
    return "roots: " + " ".join(uris)


if __name__ == "__main__":
    app.run()

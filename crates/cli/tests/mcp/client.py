"""An MCP client gavel did not write: the official Python SDK (PyPI `mcp`).

Usage: client.py SCRIPT_JSON
With "discover": true the client speaks the stateless 2026-07-28 revision
(`server/discover`, no session) and prints that step first.
The script is a JSON object: {"transport": "http"|"stdio", "url", "token",
"command": [...], "env": {...}, "steps": [...]}. Each step is one of
  {"op": "list_tools"}
  {"op": "call", "tool", "args", "meta"?, "progress"?: bool, "timeout"?: s}
  {"op": "cancel_call", "tool", "args", "after": s}
  {"op": "read_resource", "uri"}
  {"op": "list_resources"} / {"op": "list_prompts"}
  {"op": "get_prompt", "name", "args"}
  {"op": "wait_list_changed", "timeout": s}
  {"op": "subscribe", "uri"} / {"op": "unsubscribe", "uri"}
  {"op": "wait_updated", "uri", "timeout": s}
  {"op": "sleep", "seconds"}
  {"op": "set_level", "level"}
  {"op": "wait_logs", "timeout": s, "count"?: n}
  {"op": "complete", "ref": {"type": "ref/prompt", "name"} | {"type":
    "ref/resource", "uri"}, "argument": {"name", "value"}}
and prints one JSON line per step with what came back.
With "oauth": {"email"} instead of a token, the client logs in by itself
as the MCP authorization spec has it (the SDK's OAuthClientProvider:
protected resource metadata, authorization server metadata, dynamic
registration, authorization code with PKCE and a `resource`), the user
signing in at the provider's form as that email.
The script's optional "answers" object makes the client offer sampling,
elicitation and roots, answering with what it holds:
  {"sampling": TEXT, "elicitation": {CONTENT}, "roots": [URI, ...]}
and every request the server made of the client is reported in the
"asked" field of the step during which it came.
"""
import asyncio
import json
import sys
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlparse

import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def content_text(result):
    out = []
    for c in getattr(result, "content", []) or []:
        t = getattr(c, "text", None)
        if t is not None:
            out.append(t)
    return "\n".join(out)


async def run(script):
    list_changed = anyio.Event()
    updated = []
    logs = []
    asked = []
    answers = script.get("answers")
    callbacks = {}
    # call_once steps, counted from 0, and what each input_required said.
    rounds_seen = []
    rounds = {}

    async def on_log(params):
        logs.append({"level": params.level, "data": params.data})

    callbacks["logging_callback"] = on_log
    if answers is not None:
        async def sampling(context, params):
            text = params.messages[0].content.text if params.messages else ""
            asked.append({"sampling": text})
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text=answers.get("sampling", "")),
                model="test-model",
                stop_reason="endTurn",
            )

        async def elicitation(context, params):
            asked.append({"elicitation": params.message})
            return types.ElicitResult(action="accept", content=answers.get("elicitation", {}))

        async def roots(context):
            asked.append({"roots": True})
            return types.ListRootsResult(
                roots=[types.Root(uri=u) for u in answers.get("roots", [])]
            )

        callbacks["sampling_callback"] = sampling
        callbacks["elicitation_callback"] = elicitation
        callbacks["list_roots_callback"] = roots

    async def on_message(message):
        root = getattr(message, "root", message)
        method = getattr(root, "method", None)
        if method == "notifications/tools/list_changed":
            list_changed.set()
        if method == "notifications/resources/updated":
            updated.append(str(root.params.uri))

    async def steps(session):
        if script.get("discover"):
            # The 2026-07-28 revision: no initialize, no session.
            result = await session.discover()
            print(json.dumps({"op": "discover", "versions": list(result.supported_versions)}), flush=True)
        else:
            await session.initialize()
        for step in script["steps"]:
            op = step["op"]
            out = {"op": op}
            asked.clear()
            try:
                if op == "list_tools":
                    r = await session.list_tools()
                    out["tools"] = {t.name: (t.description or "") for t in r.tools}
                elif op == "call":
                    progress = []

                    async def on_progress(p, total, message):
                        progress.append(message)

                    r = await session.call_tool(
                        step["tool"],
                        step.get("args") or {},
                        read_timeout_seconds=step.get("timeout", 60),
                        progress_callback=on_progress if step.get("progress") else None,
                        meta=step.get("meta"),
                    )
                    out["is_error"] = bool(getattr(r, "isError", False) or getattr(r, "is_error", False))
                    out["text"] = content_text(r)
                    out["progress"] = progress
                elif op == "call_once":
                    # One request of a multi-round (2026-07-28) call, driven
                    # by hand: "state" is a literal requestState or
                    # {"from": N}, the state step N received; "respond"
                    # answers the input requests step N received.
                    state = step.get("state")
                    if isinstance(state, dict):
                        state = rounds[state["from"]]["state"]
                    responses = None
                    if "respond" in step:
                        asked_then = rounds[step["respond"]]["requests"]
                        responses = {}
                        for key, req in asked_then.items():
                            if req.method == "elicitation/create":
                                responses[key] = types.ElicitResult(action="accept", content=(answers or {}).get("elicitation", {}))
                            elif req.method == "sampling/createMessage":
                                responses[key] = types.CreateMessageResult(
                                    role="assistant",
                                    content=types.TextContent(type="text", text=(answers or {}).get("sampling", "")),
                                    model="test-model",
                                    stop_reason="endTurn",
                                )
                            else:
                                responses[key] = types.ListRootsResult(
                                    roots=[types.Root(uri=u) for u in (answers or {}).get("roots", [])]
                                )
                    r = await session.call_tool(
                        step["tool"],
                        step.get("args") or {},
                        read_timeout_seconds=step.get("timeout", 60),
                        input_responses=responses,
                        request_state=state,
                        allow_input_required=True,
                    )
                    if isinstance(r, types.InputRequiredResult):
                        requests = dict(r.input_requests or {})
                        rounds[len(rounds_seen)] = {"state": r.request_state, "requests": requests}
                        out["result_type"] = "input_required"
                        out["state"] = r.request_state
                        out["requests"] = {k: v.method for k, v in requests.items()}
                        out["meta"] = r.meta.model_dump() if hasattr(r.meta, "model_dump") else r.meta
                    else:
                        out["result_type"] = "complete"
                        out["is_error"] = bool(getattr(r, "is_error", False))
                        out["text"] = content_text(r)
                    rounds_seen.append(step)
                elif op == "cancel_call":
                    # Cancelling the awaiting task makes the SDK send
                    # notifications/cancelled for the request.
                    with anyio.move_on_after(step["after"]) as scope:
                        await session.call_tool(step["tool"], step.get("args") or {})
                    out["cancelled"] = scope.cancelled_caught
                elif op == "read_resource":
                    r = await session.read_resource(step["uri"])
                    out["text"] = "\n".join(getattr(c, "text", "") or "" for c in r.contents)
                elif op == "list_resources":
                    r = await session.list_resources()
                    out["uris"] = [str(x.uri) for x in r.resources]
                elif op == "list_prompts":
                    r = await session.list_prompts()
                    out["prompts"] = [p.name for p in r.prompts]
                elif op == "get_prompt":
                    r = await session.get_prompt(step["name"], step.get("args") or {})
                    out["messages"] = len(r.messages)
                elif op == "wait_list_changed":
                    with anyio.move_on_after(step["timeout"]):
                        await list_changed.wait()
                    out["seen"] = list_changed.is_set()
                elif op == "subscribe":
                    await session.subscribe_resource(step["uri"])
                    out["ok"] = True
                elif op == "unsubscribe":
                    await session.unsubscribe_resource(step["uri"])
                    out["ok"] = True
                elif op == "wait_updated":
                    with anyio.move_on_after(step["timeout"]):
                        while step["uri"] not in updated:
                            await anyio.sleep(0.1)
                    out["updated"] = sorted(set(updated))
                elif op == "sleep":
                    await anyio.sleep(step["seconds"])
                elif op == "set_level":
                    await session.set_logging_level(step["level"])
                    out["ok"] = True
                elif op == "wait_logs":
                    with anyio.move_on_after(step["timeout"]):
                        while len(logs) < step.get("count", 1):
                            await anyio.sleep(0.1)
                    out["logs"] = list(logs)
                elif op == "complete":
                    ref = step["ref"]
                    if ref["type"] == "ref/prompt":
                        r = types.PromptReference(type="ref/prompt", name=ref["name"])
                    else:
                        r = types.ResourceTemplateReference(type="ref/resource", uri=ref["uri"])
                    arg = step["argument"]
                    c = await session.complete(r, {"name": arg["name"], "value": arg["value"]}, context_arguments=step.get("context"))
                    out["values"] = list(c.completion.values)
                elif op == "touch":
                    # Tells a waiting test that this session is established.
                    open(step["path"], "w").close()
            except Exception as e:  # JSON-RPC errors come back as exceptions
                out["error"] = str(e)
                code = getattr(getattr(e, "error", None), "code", None)
                if code is not None:
                    out["code"] = code
            if asked:
                out["asked"] = list(asked)
            print(json.dumps(out), flush=True)

    if script["transport"] == "http":
        if "oauth" in script:
            http_client = create_mcp_http_client(auth=oauth_provider(script["url"], script["oauth"]))
        else:
            headers = {"Authorization": f"Bearer {script['token']}"}
            http_client = create_mcp_http_client(headers=headers)
        async with http_client as http:
            async with streamable_http_client(script["url"], http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write, message_handler=on_message, **callbacks) as session:
                    await steps(session)
    else:
        params = StdioServerParameters(
            command=script["command"][0], args=script["command"][1:], env=script.get("env")
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, message_handler=on_message, **callbacks) as session:
                await steps(session)


def oauth_provider(server_url, oauth):
    from mcp.client.auth import OAuthClientProvider, TokenStorage
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    class Memory(TokenStorage):
        def __init__(self):
            self.tokens, self.client = None, None

        async def get_tokens(self):
            return self.tokens

        async def set_tokens(self, tokens):
            self.tokens = tokens

        async def get_client_info(self):
            return self.client

        async def set_client_info(self, client_info):
            self.client = client_info

    landed = {}

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    async def sign_in(url):
        # The user submits the provider's sign-in form, which carries the
        # authorization request's parameters, with their email.
        u = urlparse(url)
        form = {k: v[0] for k, v in parse_qs(u.query).items()}
        form["email"] = oauth["email"]
        request = urllib.request.Request(
            f"{u.scheme}://{u.netloc}{u.path}", data=urlencode(form).encode(), method="POST"
        )
        try:
            urllib.request.build_opener(NoRedirect).open(request)
            raise RuntimeError("the provider did not redirect back")
        except urllib.error.HTTPError as e:
            if e.code != 302:
                raise
            landed["location"] = e.headers["location"]

    async def callback():
        q = parse_qs(urlparse(landed["location"]).query)
        return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0])

    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="gavel test client",
            redirect_uris=["http://127.0.0.1:9/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=Memory(),
        redirect_handler=sign_in,
        callback_handler=callback,
    )


if __name__ == "__main__":
    asyncio.run(run(json.loads(sys.argv[1])))

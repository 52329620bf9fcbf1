// An MCP client on the official TypeScript SDK (npm
// `@modelcontextprotocol/sdk`, installed by scripts/setup into
// .tools/npm), driven by a JSON script like tests/mcp/client.py:
//
//   node client.mjs NODE_MODULES_DIR '{"url": …, "token": …,
//     "answers": {"sampling": "…", "elicitation": {…}},
//     "steps": [{"op": "list_tools"}, {"op": "call", "tool": …, "args": {…},
//                "progress": true}, {"op": "raw", "body": {…},
//                "headers": {…}}]}'
//
// Prints one JSON line per step. "raw" posts one JSON-RPC message on the
// client's MCP session with extra headers, and prints the HTTP status and
// the JSON-RPC error code.

import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [modules, scriptText] = process.argv.slice(2);
const script = JSON.parse(scriptText);
const sdk = (p) => import(pathToFileURL(join(modules, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { CreateMessageRequestSchema, ElicitRequestSchema } = await sdk("types.js");

const headers = { Authorization: `Bearer ${script.token}` };
const transport = new StreamableHTTPClientTransport(new URL(script.url), { requestInit: { headers } });
const answers = script.answers;
const client = new Client(
  { name: "gavel-test-npm", version: "1.0.0" },
  { capabilities: answers ? { sampling: {}, elicitation: {} } : {} },
);
let asked = [];
if (answers) {
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    const first = request.params.messages[0];
    asked.push({ sampling: first?.content?.text ?? "" });
    return {
      role: "assistant",
      content: { type: "text", text: answers.sampling ?? "" },
      model: "test-model",
      stopReason: "endTurn",
    };
  });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    asked.push({ elicitation: request.params.message });
    return { action: "accept", content: answers.elicitation ?? {} };
  });
}
await client.connect(transport);

const text = (result) =>
  (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

for (const step of script.steps) {
  const out = { op: step.op };
  asked = [];
  try {
    if (step.op === "list_tools") {
      const r = await client.listTools();
      out.tools = r.tools.map((t) => t.name);
    } else if (step.op === "call") {
      const progress = [];
      const r = await client.callTool(
        { name: step.tool, arguments: step.args ?? {} },
        undefined,
        step.progress ? { onprogress: (p) => progress.push(p.message ?? String(p.progress)) } : {},
      );
      out.is_error = Boolean(r.isError);
      out.text = text(r);
      out.progress = progress;
    } else if (step.op === "read_resource") {
      const r = await client.readResource({ uri: step.uri });
      out.text = r.contents.map((c) => c.text ?? "").join("\n");
    } else if (step.op === "get_prompt") {
      const r = await client.getPrompt({ name: step.name, arguments: step.args ?? {} });
      out.messages = r.messages.length;
    } else if (step.op === "complete") {
      const r = await client.complete({ ref: step.ref, argument: step.argument });
      out.values = r.completion.values;
    } else if (step.op === "set_level") {
      await client.setLoggingLevel(step.level);
      out.ok = true;
    } else if (step.op === "raw") {
      const response = await fetch(script.url, {
        method: "POST",
        headers: {
          ...headers,
          "Content-Type": "application/json",
          Accept: "application/json, text/event-stream",
          "Mcp-Session-Id": transport.sessionId,
          "Mcp-Protocol-Version": "2025-11-25",
          ...step.headers,
        },
        body: JSON.stringify(step.body),
      });
      out.status = response.status;
      const body = await response.text();
      const json = body.startsWith("{") ? JSON.parse(body) : null;
      out.code = json?.error?.code ?? null;
      out.message = json?.error?.message ?? null;
    }
  } catch (e) {
    out.error = String(e?.message ?? e);
    if (e?.code !== undefined) out.code = e.code;
  }
  if (asked.length) out.asked = asked;
  console.log(JSON.stringify(out));
}
await client.close();

// A reverse proxy that adds `Authorization: Bearer $TOKEN` to every request
// and streams both ways (SSE included). For clients that cannot send a
// header, such as the MCP conformance runner.
// Usage: TOKEN=… node bearer-proxy.js LISTEN_PORT TARGET_URL
const http = require("http");
const [port, target] = process.argv.slice(2);
const upstream = new URL(target);
http
  .createServer((req, res) => {
    // The Host header passes as the client sent it: the gateway judges it
    // (DNS-rebinding protection), not this proxy.
    const headers = { ...req.headers, authorization: `Bearer ${process.env.TOKEN}` };
    const out = http.request(
      { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    out.on("error", (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
    req.pipe(out);
  })
  .listen(Number(port), "127.0.0.1");

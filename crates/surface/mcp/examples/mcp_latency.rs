//! Calls one tool many times over streamable HTTP, one call at a time, and
//! prints the latency percentiles as JSON: the client half of
//! `bench/mcp.sh`, which runs it against an MCP server directly and
//! through gavel in the same run.
//!
//! Usage: mcp_latency URL TOOL ARGS_JSON CALLS   (bearer token from $MCP_TOKEN)

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, JsonObject};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use std::time::{Duration, Instant};

const WARMUP: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, tool, call_args, calls] = args.as_slice() else {
        anyhow::bail!("usage: mcp_latency URL TOOL ARGS_JSON CALLS");
    };
    let call_args: JsonObject = serde_json::from_str(call_args)?;
    let calls: usize = calls.parse()?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
    if let Ok(token) = std::env::var("MCP_TOKEN") {
        config = config.auth_header(token);
    }
    let client = ().serve(StreamableHttpClientTransport::from_config(config)).await?;
    let call = || CallToolRequestParams::new(tool.clone()).with_arguments(call_args.clone());
    for _ in 0..WARMUP {
        client.call_tool(call()).await?;
    }
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let result = client.call_tool(call()).await?;
        latencies.push(t.elapsed());
        if result.is_error == Some(true) {
            anyhow::bail!("{tool} failed: {:?}", result.content);
        }
    }
    let total = started.elapsed();
    latencies.sort();
    println!(
        "{}",
        serde_json::json!({
            "calls": calls,
            "p50_us": percentile(&latencies, 0.50),
            "p90_us": percentile(&latencies, 0.90),
            "p99_us": percentile(&latencies, 0.99),
            "mean_us": total.as_secs_f64() * 1e6 / calls as f64,
            "calls_per_s": calls as f64 / total.as_secs_f64(),
        })
    );
    client.cancel().await?;
    Ok(())
}

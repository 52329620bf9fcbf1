//! `gavel mcp`: for MCP clients that only launch local servers. It speaks
//! MCP on stdio and relays every message, unchanged, to a running
//! gateway's `/mcp` with the agent's token, so the gate, the approvals and
//! the audit log stay in one place.

use rmcp::ErrorData as McpError;
use rmcp::model::{JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::{RoleClient, RoleServer};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{IntoTransport, StreamableHttpClientTransport, Transport};

/// Relays MCP between this process's stdio and the gateway at `url`
/// until either side closes.
pub async fn bridge_stdio(url: &str, token: &str) -> anyhow::Result<()> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let mut gateway = StreamableHttpClientTransport::from_config(config);
    let mut local =
        IntoTransport::<RoleServer, std::io::Error, _>::into_transport(rmcp::transport::stdio());
    loop {
        tokio::select! {
            from_client = local.receive() => {
                let Some(message) = from_client else { break };
                let id = match &message {
                    JsonRpcMessage::Request(r) => Some(r.id.clone()),
                    _ => None,
                };
                if let Err(e) = Transport::<RoleClient>::send(&mut gateway, message).await {
                    tracing::warn!(error = %e, "relaying to the gateway failed");
                    // The client hears about it in its own protocol.
                    if let Some(id) = id {
                        let error: ServerJsonRpcMessage = JsonRpcMessage::error(
                            McpError::internal_error(format!("gavel gateway {url}: {e}"), None),
                            Some(id),
                        );
                        local.send(error).await?;
                    }
                }
            }
            from_gateway = Transport::<RoleClient>::receive(&mut gateway) => {
                let Some(message) = from_gateway else { break };
                local.send(message).await?;
            }
        }
    }
    let _ = Transport::<RoleClient>::close(&mut gateway).await;
    let _ = local.close().await;
    Ok(())
}

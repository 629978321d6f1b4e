//! The stock `gst-webrtc-signalling-server` of gst-plugins-rs (its library, same handler as its
//! binary, plain `ws://` only), so tests can check our agents against the upstream server.
//!
//! Usage: `upstream-signalling-server PORT`

use gst_plugin_webrtc_signalling::handlers::Handler;
use gst_plugin_webrtc_signalling::server::Server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("usage: upstream-signalling-server PORT"))?;
    let server = Server::spawn(Handler::new);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("upstream signalling server on ws://127.0.0.1:{port}");
    while let Ok((stream, _)) = listener.accept().await {
        let mut server = server.clone();
        tokio::spawn(async move { server.accept_async(stream).await });
    }
    Ok(())
}

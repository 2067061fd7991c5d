//! A one-connection-per-answer HTTP server on 127.0.0.1 that answers with canned responses and hands back
//! the requests it received: enough to test an HTTP client (the embeddings client) without a network.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server does with one connection.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers with this status line code and JSON body.
    Json(u16, String),
    /// Reads the request and never answers (for timeouts); the connection is held for a minute.
    Silence,
}

/// Serves `replies` in order, one per connection, then stops. Returns the base URL (`http://127.0.0.1:PORT/v1`)
/// and a handle that yields every request received (head and body, as text).
pub async fn serve(replies: Vec<Reply>) -> std::io::Result<(String, JoinHandle<Vec<String>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let mut requests = Vec::new();
        for reply in replies {
            let Ok((mut socket, _)) = listener.accept().await else { break };
            let Some(request) = read_request(&mut socket).await else { break };
            requests.push(request);
            match reply {
                Reply::Json(status, body) => {
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                }
                Reply::Silence => tokio::time::sleep(Duration::from_secs(60)).await,
            }
        }
        requests
    });
    Ok((format!("http://{addr}/v1"), handle))
}

/// Reads one request: the head, then as many body bytes as its content-length says.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&raw).into_owned());
            }
        }
    }
}

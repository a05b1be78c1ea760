//! Plumbing the cross-service tests share when they run the pipeline's services as processes:
//! the environment every service reads, and a plain HTTP GET for their `/health`, `/livez` and
//! `/metrics` endpoints.
//!
//! The simulators themselves, and seeding orders into them, are [`crate::sim`]'s.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The Salesforce login every service needs: sf-sim's login URL, the connected app's client id
/// and the user it accepts, and the private key whose public half the simulator holds
/// ([`crate::keys::test_keys`]).
pub fn salesforce_login(
    login_url: String,
    client_id: &str,
    username: &str,
) -> Vec<(&'static str, String)> {
    let keys = crate::keys::test_keys();
    vec![
        ("SF_LOGIN_URL", login_url),
        ("SF_CLIENT_ID", client_id.to_owned()),
        ("SF_USERNAME", username.to_owned()),
        (
            "SF_PRIVATE_KEY_PATH",
            keys.private_key_path.display().to_string(),
        ),
    ]
}

/// Export of a service's spans over OTLP/gRPC to `endpoint` (a [`crate::otlp::Collector`]),
/// named `service`, in batches sent every 200 ms so the test need not wait long (SIGTERM
/// flushes the rest).
pub fn otlp_export(endpoint: String, service: &str) -> [(&'static str, String); 3] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]
}

/// A service's environment from `(name, value)` pairs; a later pair overrides an earlier one
/// with the same name, so extras go last.
pub fn env<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> HashMap<String, String>
where
    K: Into<String>,
    V: Into<String>,
{
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// `GET path` on 127.0.0.1:`port` over a fresh connection: the whole answer (status line,
/// headers and body) when it is HTTP/1.1, `None` when nothing (or no HTTP) answers within
/// `limit`.
pub async fn http_get(port: u16, path: &str, limit: Duration) -> Option<String> {
    http_get_with(port, path, &[], limit).await
}

/// [`http_get`] with extra request headers (`Authorization`, say).
pub async fn http_get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Option<String> {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.starts_with("HTTP/1.1 ").then_some(text)
    };
    tokio::time::timeout(limit, fut).await.ok().flatten()
}

/// The body of an answer from [`http_get`] when its status is 200.
pub fn ok_body(answer: &str) -> Option<String> {
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ok_body_only_for_status_200() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup";
        assert_eq!(ok_body(ok).as_deref(), Some("up"));
        let unavailable = "HTTP/1.1 503 Service Unavailable\r\n\r\ndown";
        assert_eq!(ok_body(unavailable), None);
        assert_eq!(ok_body("HTTP/1.1 200 OK"), None, "no end of headers");
    }

    #[test]
    fn later_pairs_override_earlier_ones() {
        let env = env([("A", "1"), ("B", "2"), ("A", "3")]);
        assert_eq!(env.len(), 2);
        assert_eq!(env["A"], "3");
    }

    #[tokio::test]
    async fn http_get_reads_a_whole_answer_and_gives_up_on_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 1024];
            let n = socket.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /livez HTTP/1.1\r\n"));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody")
                .await
                .unwrap();
            // Closing ends the answer (the request asked for `Connection: close`).
            drop(socket);
            // Silent afterwards: the next client never gets an answer.
            let (_silent, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let answer = http_get(port, "/livez", Duration::from_secs(5)).await;
        assert_eq!(ok_body(answer.as_deref().unwrap()).as_deref(), Some("body"));
        assert_eq!(
            http_get(port, "/livez", Duration::from_millis(200)).await,
            None
        );
        server.abort();
    }
}

//! Who may connect: cross-site pages are refused at the upgrade, before any asset is read.

use assetsync::pull::{PullConfig, pull};
use assetsync_protocol::Scope;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::{Raw, TestClient, TestServer};

/// The HTTP status of an upgrade carrying these `Origin` and `Host` headers (101 on success).
pub async fn upgrade(url: &str, origin: Option<&str>, host: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    match connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_pages_cannot_connect() {
    let server = TestServer::start_with(|c| c.allow_origins = vec!["https://app.example.com".into()]).await;
    let own = format!("http://{}", server.addr);
    assert_eq!(upgrade(&server.url(), None, None).await, 101, "native clients send no Origin");
    assert_eq!(upgrade(&server.url(), Some(&own), None).await, 101, "the server's own page");
    assert_eq!(upgrade(&server.url(), Some("http://localhost:5173"), None).await, 101, "a local dev server");
    assert_eq!(upgrade(&server.url(), Some("https://app.example.com"), None).await, 101, "listed");
    assert_eq!(upgrade(&server.url(), Some("https://evil.example"), None).await, 403, "any other site");
    let rebound = format!("evil.example:{}", server.addr.port());
    let origin = format!("http://{rebound}");
    assert_eq!(upgrade(&server.url(), Some(&origin), Some(&rebound)).await, 403, "DNS rebinding");
    server.stop().await;
}

/// Pulls `a.js` from the sync endpoint `url` into a new client, presenting `token`.
pub async fn pull_a_js(url: String, token: Option<&str>) -> Result<(), assetsync::Error> {
    let client = TestClient::new();
    let config = PullConfig { token: token.map(str::to_owned), ..client.config(url) };
    pull(&config, &[Scope::new("a.js").unwrap()], |_| {}).await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_a_token_serves_only_clients_that_present_it() {
    let server = TestServer::start_with(|c| c.token = Some("s3cret-token".into())).await;
    server.write("a.js", b"guarded");
    let pull = |token| pull_a_js(server.url(), token);
    let refused = pull(None).await.unwrap_err().to_string();
    assert!(refused.contains("requires a token"), "{refused}");
    let wrong = pull(Some("s3cret-tokem")).await.unwrap_err().to_string();
    assert!(wrong.contains("wrong token"), "{wrong}");
    pull(Some("s3cret-token")).await.unwrap();

    // A raw client that skips the token gets a clear error and a policy close.
    let mut raw = Raw::connect(&server).await;
    raw.send_text(r#"{"type":"hello","protocol":2}"#).await;
    let error = raw.json().await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert_eq!(raw.close_code().await, Some(1008));
    server.stop().await;
}

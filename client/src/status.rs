//! `assetsync status`: a server's `GET /status`, found from its sync endpoint's URL.

use crate::Error;

/// The JSON a server at the sync endpoint `server` (`ws://HOST:PORT/sync`) answers at
/// `/status`, with `token` as `Authorization: Bearer` when given.
pub async fn fetch(server: &str, token: Option<&str>) -> Result<serde_json::Value, Error> {
    let url = status_url(server)?;
    let mut request = reqwest::Client::new().get(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response =
        request.send().await.map_err(|e| Error::Unreachable(format!("cannot reach {url}: {e}")))?;
    let code = response.status();
    let body = response.text().await.map_err(|e| Error::Lost(format!("{url}: {e}")))?;
    if !code.is_success() {
        return Err(Error::Refused(format!("{url} answered {code}: {}", body.trim())));
    }
    serde_json::from_str(&body)
        .map_err(|e| Error::BadUrl(format!("{url} is not an assetsync server's status: {e}")))
}

/// `ws://HOST:PORT/PREFIX/sync` -> `http://HOST:PORT/PREFIX/status` (and `wss` -> `https`).
fn status_url(server: &str) -> Result<String, Error> {
    let bad = || Error::BadUrl(format!("invalid server URL {server:?}: use ws://HOST:PORT/sync"));
    let (scheme, rest) = server.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return Err(bad()),
    };
    let base = rest.strip_suffix("/sync").unwrap_or(rest.trim_end_matches('/'));
    Ok(format!("{scheme}://{base}/status"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_url_is_beside_the_sync_endpoint() {
        let url = |s| super::status_url(s).unwrap();
        assert_eq!(url("ws://127.0.0.1:8080/sync"), "http://127.0.0.1:8080/status");
        assert_eq!(url("wss://cdn.example.com/assets/sync"), "https://cdn.example.com/assets/status");
        assert_eq!(url("ws://127.0.0.1:8080"), "http://127.0.0.1:8080/status");
        assert!(super::status_url("ftp://x/sync").is_err());
    }
}

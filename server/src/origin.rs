//! Which web pages may open a sync connection: the defence against cross-site WebSocket
//! hijacking (CVE-2018-14732 in webpack-dev-server, CVE-2025-24010 in Vite).
//!
//! Browsers let any page open a WebSocket to any address, and send the page's `Origin` with the
//! upgrade, so the server must decide. A request without `Origin` does not come from a page (the
//! native client sends none) and is let through: it is no cross-site risk (`--token-file`
//! restricts everyone). By default a page may connect when
//! - its origin's host is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`): the dev
//!   case, a page served by a dev server on this machine;
//! - its origin is the server's own (`scheme://` + the `Host` header) **and** that host is an IP
//!   address. A host *name* could be an attacker's domain rebound to this server's address (DNS
//!   rebinding), so pages served under a name must be listed with `--allow-origin`.
//!
//! `--allow-origin ORIGIN` (repeatable) adds exact origins; `--allow-origin '*'` allows any page.

use std::net::IpAddr;

use axum::http::uri::{Authority, Uri};

/// The origins allowed to connect.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    /// Exact origins (`https://app.example.com`), normalised.
    allowed: Vec<String>,
    /// `*`: any page.
    any: bool,
}

impl OriginPolicy {
    /// The default policy plus the `allowed` origins (`*` for any). Refuses an entry that is not
    /// an origin (`scheme://host[:port]`, nothing after it).
    pub fn new(allowed: &[String]) -> anyhow::Result<Self> {
        let mut policy = OriginPolicy::default();
        for origin in allowed {
            if origin == "*" {
                policy.any = true;
                continue;
            }
            let normal = normalise(origin).ok_or_else(|| {
                anyhow::anyhow!("--allow-origin {origin:?} is not an origin such as https://app.example.com")
            })?;
            policy.allowed.push(normal);
        }
        Ok(policy)
    }

    /// Decides on an upgrade with these `Origin` and `Host` headers; `Err` says why not.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else { return Ok(()) };
        if self.any {
            return Ok(());
        }
        let refuse =
            || Err(format!("origin {origin:?} may not connect (allow it with --allow-origin {origin})"));
        let Some(normal) = normalise(origin) else { return refuse() };
        if self.allowed.contains(&normal) {
            return Ok(());
        }
        let uri: Uri = normal.parse().expect("normalised origins parse");
        let origin_host = uri.host().unwrap_or_default();
        if is_loopback(origin_host) {
            return Ok(());
        }
        // Same origin, when the host is an address rather than a (rebindable) name.
        let own = host.and_then(|h| h.parse::<Authority>().ok()).is_some_and(|host| {
            let port = uri.port_u16().or(default_port(uri.scheme_str()));
            host.host().eq_ignore_ascii_case(origin_host)
                && host.port_u16().or(default_port(uri.scheme_str())) == port
                && parse_ip(origin_host).is_some()
        });
        if own { Ok(()) } else { refuse() }
    }
}

/// `scheme://host[:port]`, lowercased, without a default port; `None` if `origin` is not one.
fn normalise(origin: &str) -> Option<String> {
    let uri: Uri = origin.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
    {
        return None;
    }
    if origin.ends_with('/') {
        return None;
    }
    let host = uri.host()?.to_ascii_lowercase();
    Some(match uri.port_u16().filter(|p| Some(*p) != default_port(Some(&scheme))) {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || parse_ip(host).is_some_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_let_in_by_the_rules() {
        let policy = OriginPolicy::new(&["https://app.example.com".into()]).unwrap();
        let ok = |origin: Option<&str>, host: &str| policy.check(origin, Some(host)).is_ok();
        assert!(ok(None, "example.com"), "native clients send no Origin");
        assert!(ok(Some("http://localhost:5173"), "127.0.0.1:8080"), "a local dev server's page");
        assert!(ok(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"));
        assert!(ok(Some("http://[::1]:8080"), "[::1]:8080"));
        assert!(ok(Some("http://192.168.1.5:8080"), "192.168.1.5:8080"), "own origin, by address");
        assert!(ok(Some("https://APP.example.com:443"), "anything"), "listed, normalised");
        assert!(!ok(Some("https://evil.example"), "127.0.0.1:8080"), "a cross-site page");
        assert!(!ok(Some("http://evil.example:8080"), "evil.example:8080"), "DNS rebinding");
        assert!(!ok(Some("http://192.168.1.5:9999"), "192.168.1.5:8080"), "another port");
        assert!(!ok(Some("null"), "127.0.0.1:8080"), "sandboxed or file pages");
        assert!(!ok(Some("http://localhost.evil.example"), "127.0.0.1:8080"));
        let any = OriginPolicy::new(&["*".into()]).unwrap();
        assert!(any.check(Some("https://evil.example"), None).is_ok());
        assert!(OriginPolicy::new(&["app.example.com".into()]).is_err());
        assert!(OriginPolicy::new(&["https://app.example.com/path".into()]).is_err());
    }
}

//! Who is at the other end of a connection that came through a reverse proxy.
//!
//! Behind nginx every connection comes from nginx's address; the client's own address is in
//! `X-Forwarded-For`, a header any client can also send. It is believed only from the addresses
//! given with `--trusted-proxy`, read right to left: the first address that is not itself a
//! trusted proxy is the client (nginx's `real_ip_recursive`). The address is only logged: no
//! decision depends on it. `X-Forwarded-Host` and `X-Forwarded-Proto` are never read: the
//! origin check (see [`crate::origin`]) compares a page's `Origin` with the `Host` header, which
//! the proxy passes on (`proxy_set_header Host $http_host`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A connection's remote end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Remote {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client's address as forwarded by a trusted proxy, when `peer` is one.
    pub client: Option<IpAddr>,
}

impl Remote {
    /// The remote end of a connection from `peer` whose `X-Forwarded-For` headers are
    /// `forwarded_for`, believing them only if `peer` is in `trusted`.
    pub fn new<'a>(
        peer: SocketAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
        trusted: &[IpAddr],
    ) -> Self {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|t| t.to_canonical() == ip.to_canonical());
        if !is_trusted(&peer.ip()) {
            return Remote { peer, client: None };
        }
        // Each proxy appends the address it received the request from, so the rightmost
        // address that no trusted proxy added is the client's; anything left of it is
        // whatever the client claimed.
        let hops = forwarded_for.rev().flat_map(|h| h.rsplit(',')).map(|a| a.trim().parse::<IpAddr>());
        let mut client = None;
        for hop in hops {
            match hop {
                Ok(ip) if is_trusted(&ip) => client = Some(ip),
                Ok(ip) => return Remote { peer, client: Some(ip) },
                Err(_) => break, // a malformed entry: trust nothing beyond it
            }
        }
        Remote { peer, client }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.client {
            Some(client) => write!(f, "{client} via {}", self.peer),
            None => write!(f, "{}", self.peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
        let nginx: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let trusted = ["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let client = |peer, headers: &[&str]| Remote::new(peer, headers.iter().copied(), &trusted).client;
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());

        assert_eq!(client(stranger, &["198.51.100.7"]), None, "a client cannot claim an address");
        assert_eq!(client(nginx, &["198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(client(nginx, &[]), None, "a trusted proxy that forwards nothing");
        // The client prepended a lie; nginx appended what it saw.
        assert_eq!(client(nginx, &["6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
        // Two trusted hops (a CDN edge 10.0.0.2, then nginx), over two headers.
        assert_eq!(client(nginx, &["6.6.6.6, 198.51.100.7", "10.0.0.2"]), ip("198.51.100.7"));
        assert_eq!(client(nginx, &["6.6.6.6, garbage, 10.0.0.2"]), ip("10.0.0.2"), "nothing past garbage");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(client(mapped, &["198.51.100.7"]), ip("198.51.100.7"), "IPv4-mapped IPv6 peer");
        let shown = Remote::new(nginx, ["198.51.100.7"].into_iter(), &trusted).to_string();
        assert_eq!(shown, "198.51.100.7 via 127.0.0.1:40000");
    }
}

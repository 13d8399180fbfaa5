//! Who the client is: the socket peer, or — only when the peer is a trusted proxy — the
//! nearest untrusted address in `X-Forwarded-For`. A client cannot spoof its way past the
//! metrics guard or the rate limiter by sending the header itself.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The client's IP as the edge should believe it.
pub fn client_ip(peer: SocketAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !is_trusted(peer_ip, trusted) {
        return peer_ip;
    }
    // Walk the chain from the nearest hop outwards; the first address not ours is the client.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(*ip, trusted))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer_ip)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", xff.parse().expect("ascii"));
        headers
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().filter_map(|n| n.parse().ok()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().expect("addr");
        assert_eq!(
            client_ip(peer, &headers("10.0.0.1"), &[]).to_string(),
            "203.0.113.9"
        );
    }

    #[test]
    fn trusted_proxy_forwards_the_nearest_untrusted_hop() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().expect("addr");
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(peer, &headers("1.2.3.4, 198.51.100.7, 10.0.0.3"), &trusted);
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn mapped_ipv6_peer_compares_as_ipv4() {
        let peer: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().expect("addr");
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer, &headers("198.51.100.7"), &trusted).to_string(),
            "198.51.100.7"
        );
    }
}

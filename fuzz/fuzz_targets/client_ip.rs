//! `X-Forwarded-For` and `Forwarded` (RFC 7239) parsing, through `ClientIp::client_ip` with
//! trusted proxies and arbitrary header bytes.
//!
//! Besides never panicking, the walk must keep its promises: an untrusted peer is the client
//! whatever it sends, and IPv4-mapped addresses come back as IPv4.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use http::header::FORWARDED;
use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::core::key::ClientIp;
use tollgate::core::{ForwardedHeader, PeerAddr, RequestHead, TrustedProxies};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    peer: Peer,
    forwarded: bool,
    /// Each element is one header line.
    lines: Vec<&'a [u8]>,
}

#[derive(Arbitrary, Debug)]
enum Peer {
    TrustedV4(u8),
    TrustedV6(u16),
    Mapped(u8),
    Untrusted([u8; 4]),
    Any(IpAddr),
}

fn trusted() -> &'static TrustedProxies {
    static TRUSTED: OnceLock<TrustedProxies> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        TrustedProxies::new(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]).expect("valid CIDRs")
    })
}

fn peer(peer: &Peer) -> IpAddr {
    match *peer {
        Peer::TrustedV4(last) => IpAddr::from([10, 0, 0, last]),
        Peer::TrustedV6(last) => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]),
        Peer::Mapped(last) => IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, u16::from(last)]),
        Peer::Untrusted(octets) => IpAddr::from(octets),
        Peer::Any(ip) => ip,
    }
}

fuzz_target!(|input: Input<'_>| {
    let (header, name) = if input.forwarded {
        (ForwardedHeader::Forwarded, FORWARDED)
    } else {
        (
            ForwardedHeader::XForwardedFor,
            HeaderName::from_static("x-forwarded-for"),
        )
    };
    let peer = peer(&input.peer);
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer, 4000)));
    for line in &input.lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            request.headers_mut().append(name.clone(), value);
        }
    }
    let extractor = ClientIp::new(trusted().clone()).header(header);
    let client = extractor
        .client_ip(&RequestHead::of(&request))
        .expect("the request has a peer address");
    let peer = peer.to_canonical();
    if !trusted().contains(peer) {
        assert_eq!(client, peer, "an untrusted peer chose its own address");
    }
    assert_eq!(
        client,
        client.to_canonical(),
        "IPv4-mapped addresses are returned as IPv4"
    );
});

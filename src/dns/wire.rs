//! DNS on the wire: plain queries (UDP, TCP when truncated) and TCP exchanges for signed updates.
//! Queries are sent directly, without a caching resolver in between, so verification sees what
//! each server answers right now.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;

/// Addresses and TTL of one rrset as a server answered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RrAnswer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Option<u32>,
}

pub(super) fn name(s: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(s).map_err(|e| DnsError::Config(format!("{s:?} is not a domain name: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A and AAAA of `name` from one server, asked concurrently, recursion desired.
pub(super) async fn lookup(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, DnsError> {
    let n = self::name(name)?;
    let (a, aaaa) = futures::future::join(query(server, &n, RecordType::A, true, timeout), query(server, &n, RecordType::AAAA, true, timeout)).await;
    let mut all = a?.addresses;
    all.extend(aaaa?.addresses);
    Ok(all)
}

/// One query; NXDOMAIN and NODATA are empty answers, any other error code is an error.
pub(super) async fn query(server: SocketAddr, name: &Name, rtype: RecordType, recursion: bool, timeout: Duration) -> Result<RrAnswer, DnsError> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = recursion;
    msg.add_query(Query::query(name.clone(), rtype));
    let bytes = encode(&msg, server)?;
    let mut resp = udp_exchange(server, &bytes, msg.metadata.id, timeout).await?;
    if resp.metadata.truncation {
        resp = decode(&tcp_exchange(server, &bytes, timeout).await?, server)?;
    }
    match resp.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => return Err(DnsError::Protocol { server: server.to_string(), message: format!("query {name} {rtype} answered {code}") }),
    }
    let mut out = RrAnswer::default();
    for r in &resp.answers {
        // A recursive answer may start with a CNAME chain; only the addresses matter.
        let ip = match (&r.data, rtype) {
            (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
            (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
            _ => continue,
        };
        out.addresses.push(ip);
        out.ttl = Some(out.ttl.map_or(r.ttl, |t: u32| t.min(r.ttl)));
    }
    out.addresses.sort();
    out.addresses.dedup();
    Ok(out)
}

pub(super) fn encode(msg: &Message, server: SocketAddr) -> Result<Vec<u8>, DnsError> {
    msg.to_vec().map_err(|e| DnsError::Protocol { server: server.to_string(), message: format!("encoding the request: {e}") })
}

pub(super) fn decode(bytes: &[u8], server: SocketAddr) -> Result<Message, DnsError> {
    Message::from_vec(bytes).map_err(|e| DnsError::Protocol { server: server.to_string(), message: format!("malformed response: {e}") })
}

fn io(server: SocketAddr) -> impl FnOnce(std::io::Error) -> DnsError {
    move |source| DnsError::Io { server: server.to_string(), source }
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8], id: u16, timeout: Duration) -> Result<Message, DnsError> {
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(bind).await.map_err(io(server))?;
    sock.connect(server).await.map_err(io(server))?;
    let run = async {
        sock.send(bytes).await.map_err(io(server))?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).await.map_err(io(server))?;
            // A stray or late datagram for another query is not our answer.
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id {
                    return Ok(m);
                }
            }
        }
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| DnsError::Timeout { server: server.to_string(), after: timeout })?
}

/// Sends one length-prefixed message over TCP and returns the raw response.
pub(super) async fn tcp_exchange(server: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>, DnsError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| DnsError::Protocol { server: server.to_string(), message: format!("request of {} bytes is too large", bytes.len()) })?;
    let run = async {
        let mut s = TcpStream::connect(server).await.map_err(io(server))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.map_err(io(server))?;
        let n = s.read_u16().await.map_err(io(server))?;
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await.map_err(io(server))?;
        Ok(buf)
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| DnsError::Timeout { server: server.to_string(), after: timeout })?
}

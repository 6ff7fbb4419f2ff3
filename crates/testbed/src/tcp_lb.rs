//! A TCP load balancer in front of a global's etcd members, std only: each new connection goes
//! to the next member in turn, and to the one after when that one refuses (what HAProxy's health
//! checks amount to for a dead member); bytes are then copied both ways until either side
//! closes. The lab runs one per global inside its supervisor (it lives and dies with the
//! global); the tests put one in front of their etcd clusters.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a member gets to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One member behind the balancer.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// The member itself: a connection to it that fails takes it out of this turn.
    pub member: SocketAddr,
    /// Where the bytes go when it is up: the member, or a proxy in front of it (tests inject
    /// faults there).
    pub via: SocketAddr,
}

impl Backend {
    pub fn direct(member: SocketAddr) -> Backend {
        Backend { member, via: member }
    }
}

/// A running balancer; its accept loop runs on a thread of its own for as long as the process.
pub struct TcpLb {
    pub addr: SocketAddr,
    /// The index of the backend the next connection tries first.
    next: Arc<AtomicUsize>,
    out_of_rotation: Arc<Mutex<Vec<bool>>>,
}

impl TcpLb {
    /// Binds `addr` (port 0: any free port) and serves it.
    pub fn bind(addr: SocketAddr, backends: Vec<Backend>) -> std::io::Result<TcpLb> {
        TcpLb::serve(TcpListener::bind(addr)?, backends)
    }

    /// Serves connections accepted on `listener`, handed to `backends` in turn.
    pub fn serve(listener: TcpListener, backends: Vec<Backend>) -> std::io::Result<TcpLb> {
        let addr = listener.local_addr()?;
        let next = Arc::new(AtomicUsize::new(0));
        let out_of_rotation = Arc::new(Mutex::new(vec![false; backends.len()]));
        let (n, out) = (next.clone(), out_of_rotation.clone());
        std::thread::Builder::new().name(format!("lb {addr}")).spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let (n, out, backends) = (n.clone(), out.clone(), backends.clone());
                std::thread::spawn(move || forward(inbound, &backends, n.fetch_add(1, Ordering::SeqCst), &out));
            }
        })?;
        Ok(TcpLb { addr, next, out_of_rotation })
    }

    /// Takes backend `i` out of rotation (or back in) for new connections, as a drained node.
    pub fn drain(&self, i: usize, out: bool) {
        if let Ok(mut o) = self.out_of_rotation.lock() {
            o[i] = out;
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }
}

/// Carries `inbound` to the first backend from `start` on that is in rotation and accepts; the
/// connection is dropped (the client sees it closed) when none does.
fn forward(inbound: TcpStream, backends: &[Backend], start: usize, out: &Mutex<Vec<bool>>) {
    for k in 0..backends.len() {
        let i = (start + k) % backends.len();
        if out.lock().map(|o| o[i]).unwrap_or(false) {
            continue;
        }
        let b = backends[i];
        let Ok(member) = TcpStream::connect_timeout(&b.member, CONNECT_TIMEOUT) else { continue };
        let outbound = if b.via == b.member {
            member
        } else {
            // The member is up: carry the bytes through its proxy.
            drop(member);
            match TcpStream::connect(b.via) {
                Ok(s) => s,
                Err(_) => continue,
            }
        };
        pipe(inbound, outbound);
        return;
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    // Bytes go on as they arrive: with Nagle's algorithm on the proxy's sockets, a gRPC request
    // written in two parts waited for the peer's delayed ACK (84 ms a get through the balancer
    // against 1.5 ms to a member).
    let _ = (a.set_nodelay(true), b.set_nodelay(true));
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    let t = std::thread::spawn(move || copy_until_closed(a2, b2));
    copy_until_closed(b, a);
    let _ = t.join();
}

fn copy_until_closed(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server that prefixes what it sends back with `tag`.
    fn echo(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1];
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&[tag, buf[0]]);
                    }
                });
            }
        });
        addr
    }

    fn ask(lb: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(lb).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"x").ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).ok()?;
        (buf[1] == b'x').then_some(buf[0])
    }

    #[test]
    fn connections_go_round_robin_and_skip_a_member_that_refuses() {
        // A port nothing listens on: bound, then closed.
        let dead = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("addr");
        let backends = vec![Backend::direct(echo(1)), Backend::direct(dead), Backend::direct(echo(3))];
        let lb = TcpLb::bind("127.0.0.1:0".parse().expect("addr"), backends).expect("lb");
        let seen: Vec<Option<u8>> = (0..3).map(|_| ask(lb.addr)).collect();
        assert_eq!(seen, [Some(1), Some(3), Some(3)]);
        lb.drain(2, true);
        assert_eq!(ask(lb.addr), Some(1));
        assert_eq!(lb.connections(), 4);
    }
}

//! Loopback ports for the servers a lab and the tests start.
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range, the same range every
//! outgoing connection takes its local port from: between the probe and the server's own bind,
//! a kubectl or an etcd client on the machine can take it, and a server that restarts on a fixed
//! port (the lab's supervisor restarts them so) then never comes back. So ports are handed out
//! from *below* the ephemeral range, in turn, by a counter that every drctl process and test on
//! the machine shares under `flock`: nothing connects from there, and two labs never get the same
//! port until the counter wraps (thousands of ports later).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use backon::{BlockingRetryable, ConstantBuilder};

/// The lowest port handed out; below are well-known and registered services' ports.
const FLOOR: u16 = 15000;
/// Fewer ports than this below the ephemeral range and the counter would wrap too soon.
const MIN_SPAN: u16 = 2000;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no free loopback port in {low}..{high} (every one was bound by something else)")]
    Exhausted { low: u16, high: u16 },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PortError {
    let what = what.into();
    move |source| PortError::Io { what, source }
}

/// How many sets of fresh ports a server gets before its start is an error.
const START_ATTEMPTS: usize = 3;

/// Starts a server that picks fresh ports on each call of `start`, and calls it again when the
/// start fails: a port below the ephemeral range can still be bound by a process outside drctl
/// between [`free_port`] and the server's own bind. The one port-retry of the lab and the tests.
pub fn on_fresh_ports<T, E: std::fmt::Display>(what: &str, start: impl FnMut() -> Result<T, E>) -> Result<T, String> {
    // No pause between attempts: each one takes new ports, there is nothing to wait out.
    let fresh = ConstantBuilder::default().with_delay(Duration::ZERO).with_max_times(START_ATTEMPTS - 1);
    let mut errors = Vec::new();
    let started = start.retry(fresh).notify(|e, _| errors.push(format!("attempt {}: {e}", errors.len() + 1))).call();
    started.map_err(|e| {
        errors.push(format!("attempt {START_ATTEMPTS}: {e}"));
        format!("{what} did not start on {START_ATTEMPTS} sets of fresh ports:\n{}", errors.join("\n"))
    })
}

/// A loopback port free for both TCP and UDP (PowerDNS and BIND serve both on one port).
pub fn free_port() -> Result<u16, PortError> {
    let Some((low, high)) = range(&std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default()) else {
        // The ephemeral range starts too low to leave room: the kernel's choice is all there is.
        let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind an ephemeral port"))?;
        return Ok(l.local_addr().map_err(io("read an ephemeral port"))?.port());
    };
    let mut counter = Counter::lock()?;
    let mut port = counter.read().filter(|p| (low..high).contains(p)).unwrap_or(low);
    for _ in low..high {
        let candidate = port;
        port = if port + 1 >= high { low } else { port + 1 };
        if bindable(candidate) {
            counter.write(port)?;
            return Ok(candidate);
        }
    }
    Err(PortError::Exhausted { low, high })
}

/// The ports to hand out: from FLOOR up to the start of the ephemeral range
/// (`ip_local_port_range` is "LOW HIGH"); None when that leaves fewer than MIN_SPAN.
fn range(ip_local_port_range: &str) -> Option<(u16, u16)> {
    let ephemeral_low: u16 = ip_local_port_range.split_whitespace().next()?.parse().ok()?;
    (ephemeral_low >= FLOOR.checked_add(MIN_SPAN)?).then_some((FLOOR, ephemeral_low))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// The next port to try, in a file shared by every process on the machine, held under flock.
struct Counter(File);

impl Counter {
    fn path() -> PathBuf {
        std::env::temp_dir().join("drctl-next-port")
    }

    fn lock() -> Result<Counter, PortError> {
        let path = Counter::path();
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor this File owns; released when the File closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(PortError::Io { what: format!("lock {}", path.display()), source: std::io::Error::last_os_error() });
        }
        Ok(Counter(f))
    }

    fn read(&mut self) -> Option<u16> {
        let mut s = String::new();
        self.0.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }

    fn write(&mut self, next: u16) -> Result<(), PortError> {
        let what = || format!("write {}", Counter::path().display());
        self.0.set_len(0).map_err(io(what()))?;
        self.0.seek(SeekFrom::Start(0)).map_err(io(what()))?;
        self.0.write_all(next.to_string().as_bytes()).map_err(io(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range() {
        assert_eq!(range("32768\t60999\n"), Some((15000, 32768)));
        assert_eq!(range("20000 60999"), Some((15000, 20000)));
        // Too little room, or unreadable: fall back to the kernel's choice.
        assert_eq!(range("16000 60999"), None);
        assert_eq!(range("1024 65535"), None);
        assert_eq!(range(""), None);
        assert_eq!(range("garbage"), None);
    }

    #[test]
    fn a_start_that_fails_is_tried_again_on_fresh_ports_up_to_three_times() {
        let mut calls = 0;
        let started = on_fresh_ports("etcd", || {
            calls += 1;
            if calls < 3 {
                Err(format!("bind: address in use ({calls})"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(started, Ok(3));
        let mut calls = 0;
        let e = on_fresh_ports::<(), _>("named", || {
            calls += 1;
            Err("exited")
        })
        .expect_err("never starts");
        assert_eq!(calls, 3);
        assert_eq!(e, "named did not start on 3 sets of fresh ports:\nattempt 1: exited\nattempt 2: exited\nattempt 3: exited");
    }

    #[test]
    fn two_ports_in_a_row_differ_and_are_free() {
        let a = free_port().expect("a port");
        let b = free_port().expect("another port");
        assert_ne!(a, b);
        assert!(bindable(a) && bindable(b));
    }
}

//! Who is at the other end of a loopback TCP connection (`listen.tcp`):
//! the uid that owns the peer's socket in the kernel's socket table,
//! `/proc/net/tcp` and `/proc/net/tcp6` of this network namespace (a pod's
//! containers share it). The peer's socket is the entry whose local
//! address is the connection's peer address and whose remote address is
//! the listener's; a socket of an IPv6 (dual-stack) client connecting to
//! 127.0.0.1, as Java's are, is listed in `tcp6` with IPv4-mapped
//! addresses. The table records no group or process: a TCP caller has a
//! uid only ([`NO_GID`]).

use crate::policy::Caller;
use std::net::SocketAddr;

/// The gid of a TCP caller: none (`(gid_t) -1`), so that no gid rule
/// matches it (config validation refuses this gid in rules).
pub const NO_GID: u32 = u32::MAX;

/// The caller of a TCP connection from `peer` to `local`, if the kernel
/// lists the peer's socket; `None` when it does not (the peer closed, or
/// is not in this network namespace).
pub fn tcp_caller(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<Caller>> {
    let (local, peer) = (plain(local), plain(peer));
    let v4 = procfs::net::tcp().map_err(std::io::Error::other)?;
    let v6 = procfs::net::tcp6().map_err(std::io::Error::other)?;
    let uid = (v4.iter().chain(&v6))
        .find(|e| plain(e.local_address) == peer && plain(e.remote_address) == local)
        .map(|e| e.uid);
    Ok(uid.map(|uid| Caller {
        uid,
        gid: NO_GID,
        pid: None,
        container: None,
    }))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn plain(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_client_is_found_with_its_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        let caller = tcp_caller(local, peer)
            .unwrap()
            .expect("the client's socket is listed");
        assert_eq!(caller.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(caller.gid, NO_GID);
        drop(client);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp_caller(local, other).unwrap().is_none());
    }

    #[test]
    fn mapped_addresses_are_plain() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:8200".parse().unwrap();
        assert_eq!(plain(mapped), "127.0.0.1:8200".parse().unwrap());
        let v6: SocketAddr = "[::1]:8200".parse().unwrap();
        assert_eq!(plain(v6), v6);
    }
}

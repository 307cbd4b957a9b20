//! systemd `Type=notify` support: `READY=1` once the node serves, `STATUS=…` lines,
//! `RELOADING=1` … `READY=1` around a config reload ([`reloading`]), and `STOPPING=1` when it
//! begins to shut down. Written to the datagram socket systemd names in
//! `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`); without it, nothing happens.

use std::os::unix::net::UnixDatagram;

/// Sends one notification (e.g. `"READY=1\nSTATUS=serving"`). Failures are logged, never fatal:
/// a node must not stop serving because its supervisor's socket went away.
pub fn notify(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &target),
        }
    });
    if let Err(error) = result {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Tells systemd a reload began (`RELOADING=1`, with the `MONOTONIC_USEC` it wants to order
/// reloads by); follow it with `READY=1` when done.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

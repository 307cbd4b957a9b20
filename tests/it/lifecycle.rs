//! Running under a supervisor: systemd `Type=notify` readiness, `RELOADING=1` … `READY=1`
//! around a SIGHUP reload, and SIGTERM draining first (readiness fails while the node still
//! serves), then a clean exit.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::node::{binary, config_text, Opts};
use crate::support::{Client, StubOrigin};

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("no notification from copyist in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_drains_before_it_stops_on_sigterm() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = "[health]\nprobe_interval = \"100ms\"\nshutdown_delay = \"2s\"\n";
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_text(
            &data,
            &origin.url(),
            Opts {
                extra,
                ..Opts::default()
            },
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(binary())
        .args(["run", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = tokio::task::block_in_place(|| recv(&socket));
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving as writer on 127.0.0.1:"),
        "{ready}"
    );
    let admin: std::net::SocketAddr = std::fs::read_to_string(data.join("admin.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let admin = Client::new(admin);
    crate::assert_eventually!(admin.get("/readiness").await.status == 200, "never ready");

    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let reloading = tokio::task::block_in_place(|| recv(&socket));
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let reloaded = tokio::task::block_in_place(|| recv(&socket));
    assert!(
        reloaded.starts_with("READY=1\nSTATUS=configuration reloaded"),
        "{reloaded}"
    );
    assert_eq!(child.try_wait().unwrap(), None, "SIGHUP stopped the node");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopping = tokio::task::block_in_place(|| recv(&socket));
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    // Draining: still serving, but readiness fails so load balancers move away.
    let r = admin.get("/readiness").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("shutting down"), "{}", r.text());
    let status = admin.get("/api/v1/status").await.text();
    assert!(status.contains(r#""drain":"shutting down""#), "{status}");
    assert_eq!(child.try_wait().unwrap(), None, "stopped before draining");
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "exit status {status}");
}

//! Memory of `av-milter` on a 50 MB message: the message is streamed to a real clamd chunk by
//! chunk (64 KiB milter body chunks), so the daemon's peak RSS (`VmHWM`) stays far below the
//! message size. Prints the measured figures.
//!
//! Run: `cargo test -p mailstack-examples --release --test av_rss -- --nocapture`.

mod support;

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::{Actions, Protocol};
use support::clamd::Clamd;
use support::milters::Daemon;

const AV_MILTER: &str = env!("CARGO_BIN_EXE_av-milter");

fn vm_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[test]
fn fifty_megabyte_message_keeps_peak_rss_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clamd = Clamd::start(
        &dir.join("clamd"),
        "StreamMaxLength 80M\nMaxScanSize 100M\nMaxFileSize 100M\n",
    );
    let socket = &clamd.socket;
    let conf = dir.join("clamav-milter.conf");
    std::fs::write(
        &conf,
        format!(
            "ClamdSocket unix:{}\nMaxFileSize 80M\nAddHeader Yes\nReadTimeout 300\n",
            socket.display()
        ),
    )
    .unwrap();
    let milter = Daemon::start(
        Path::new(AV_MILTER),
        dir,
        "av",
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    let idle_kb = vm_kb(milter.pid(), "VmHWM:");

    // 50 MiB of 78-character text lines.
    let mut raw = b"Subject: big\r\nFrom: a@src.example\r\n\r\n".to_vec();
    let line = [
        b"abcdefghijklmnopqrstuvwxyz0123456789".repeat(2).as_slice(),
        b"abcdef\r\n",
    ]
    .concat();
    while raw.len() < 50 * 1024 * 1024 {
        raw.extend_from_slice(&line);
    }
    let mut msg = Message::parse(b"<a@src.example>", &[b"<b@dest.example>"], &raw);
    msg.macros = vec![(b'M', vec![(Bytes::from("i"), Bytes::from("BIG1"))])];
    let config = ClientConfig::offer(
        6,
        Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
        Protocol::empty(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let outcome = rt.block_on(async {
        let spec = SocketSpec::Unix(dir.join("av.sock"));
        let mut c = Client::connect(&spec, config).await.unwrap();
        c.connection(&Connection::default()).await.unwrap();
        c.message(&msg).await.unwrap()
    });
    let elapsed = t.elapsed();
    let peak_kb = vm_kb(milter.pid(), "VmHWM:");
    drop(clamd);
    println!(
        "av-milter, {} byte message: VmHWM idle {idle_kb} kB, after {peak_kb} kB; scan round trip {elapsed:?}",
        raw.len()
    );
    assert_eq!(outcome.decision, Reply::Accept, "{outcome:?}");
    assert!(
        format!("{:?}", outcome.modifications).contains("Clean"),
        "the 50 MB message was scanned and found clean: {outcome:?}"
    );
    assert!(
        peak_kb < 40 * 1024,
        "peak RSS {peak_kb} kB: the message must be streamed, not buffered"
    );
}

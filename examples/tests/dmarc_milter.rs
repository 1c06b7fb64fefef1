//! The `dmarc-milter` binary, started with `--config` and `--nameserver` pointing at a DNS
//! server this test runs on 127.0.0.1, driven over its unix socket by milter-proto's MTA-side
//! client with Postfix's offer: a p=reject failure gets `550 5.7.1 rejected by DMARC policy
//! for <domain>`, a p=none failure is accepted with `dmarc=fail`, an SPF-aligned message gets
//! `dmarc=pass`, and each evaluated message lands in the HistoryFile.
//!
//! Run: `cargo test -p mailstack-examples --test dmarc_milter`.

mod spf_support;
mod support;

use std::path::Path;

use bytes::Bytes;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message, Outcome};
use spf_support::Zone;
use support::milters::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");

fn zone() -> Zone {
    let mut z = Zone::default();
    z.txt("_dmarc.reject.example", "v=DMARC1; p=reject")
        .txt("_dmarc.none.example", "v=DMARC1; p=none")
        .txt("reject.example", "v=spf1 ip4:192.0.2.1 -all");
    z
}

fn message(sender: &str, raw: &str) -> Message {
    Message::parse(
        format!("<{sender}>").as_bytes(),
        &[b"<bob@dest.example>"],
        raw.as_bytes(),
    )
}

/// Authentication-Results values inserted, top of the message first.
fn ar(o: &Outcome) -> Vec<String> {
    let mut v: Vec<String> = o
        .modifications
        .iter()
        .filter_map(|r| match r {
            Reply::InsHeader { name, value, .. } if &name[..] == b"Authentication-Results" => {
                // The generic adapter negotiates SMFIP_HDR_LEADSPC: the value carries the
                // space the MTA would otherwise put after the colon.
                let v = String::from_utf8_lossy(value);
                let v = v.strip_prefix(' ').expect("HDR_LEADSPC: a leading space");
                Some(v.to_owned())
            }
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[tokio::test]
async fn binary_rejects_fails_and_passes_over_real_dns() {
    let dns = spf_support::start_dns_local(zone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.dat");
    let conf = dir.path().join("opendmarc.conf");
    std::fs::write(
        &conf,
        format!(
            "AuthservID mx.example\nRejectFailures yes\nSPFSelfValidate yes\nHistoryFile {}\n\
             PidFile /nonexistent/ignored.pid\n",
            history.display()
        ),
    )
    .unwrap();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--nameserver",
        &dns.to_string(),
        "--allow-root",
    ];
    let daemon = Daemon::start(Path::new(BIN), dir.path(), "dmarc", &args);
    let spec = daemon.spec().parse().unwrap();
    let mut client = Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap();
    let c = client.connection(&Connection::default()).await.unwrap();
    assert_eq!(c.decision, Reply::Continue);

    let o = client
        .message(&message(
            "mallory@spammer.example",
            "From: Alice <alice@reject.example>\r\nSubject: x\r\n\r\nbody\r\n",
        ))
        .await
        .unwrap();
    assert_eq!(
        o.decision,
        Reply::ReplyCode(Bytes::from_static(
            b"550 5.7.1 rejected by DMARC policy for reject.example"
        ))
    );

    let o = client
        .message(&message(
            "mallory@spammer.example",
            "From: a@none.example\r\nSubject: x\r\n\r\nbody\r\n",
        ))
        .await
        .unwrap();
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(
        ar(&o),
        [
            "mx.example; dmarc=fail (p=none dis=none) header.from=none.example",
            "mx.example; spf=none smtp.mailfrom=spammer.example"
        ]
    );

    let o = client
        .message(&message(
            "alice@reject.example",
            "From: Alice <alice@reject.example>\r\nSubject: x\r\n\r\nbody\r\n",
        ))
        .await
        .unwrap();
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(
        ar(&o),
        [
            "mx.example; dmarc=pass (p=reject dis=none) header.from=reject.example",
            "mx.example; spf=pass smtp.mailfrom=reject.example"
        ]
    );
    client.quit().await.unwrap();

    let text = std::fs::read_to_string(&history).unwrap();
    assert_eq!(text.matches("job ").count(), 3, "{text}");
    assert!(
        text.contains("from reject.example\n") && text.contains("action 0\n"),
        "{text}"
    );
    assert!(text.contains("ipaddr 192.0.2.1\n"), "{text}");
    drop(daemon);
}

#[test]
fn config_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("opendmarc.conf");
    std::fs::write(&conf, "Socket inet:8893@localhost\nFailureReports true\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--check-config", "--config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2: FailureReports yes: expected MailstackFailureSMTP",
            conf.display()
        )),
        "{err}"
    );
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in [
        "--socket",
        "--config",
        "--nameserver",
        "RejectFailures",
        "DMARCSpecification",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

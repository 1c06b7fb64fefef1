//! The DMARC milter handler driven by milter-proto's MTA-side client (Postfix's offer), with
//! an in-memory DNS zone: p=reject failure → `550 5.7.1`, p=none failure → accepted with
//! `dmarc=fail`, pass → `dmarc=pass`; IgnoreHosts and IgnoreAuthenticatedClients skip.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use mailstack::dmarc::milter::DmarcMilter;
use mailstack::dmarc::{DmarcConfig, DmarcFilter};
use mailstack::dns::{MemoryRecord, MemoryResolver};
use milter_proto::client::{Client, ClientConfig, Connection, Message, Outcome};
use milter_proto::command::ConnAddr;
use milter_proto::reply::Reply;
use milter_proto::server::{ServerConfig, serve_connection};

fn filter(conf: &str) -> Arc<DmarcFilter> {
    let mut z = MemoryResolver::new();
    for (name, txt) in [
        ("_dmarc.reject.example", "v=DMARC1; p=reject"),
        ("_dmarc.none.example", "v=DMARC1; p=none"),
        ("_dmarc.quar.example", "v=DMARC1; p=quarantine"),
        ("reject.example", "v=spf1 ip4:192.0.2.1 -all"),
    ] {
        z.add(name, MemoryRecord::Txt(txt.as_bytes().to_vec()));
    }
    let cfg = DmarcConfig::parse(Path::new("opendmarc.conf"), conf).unwrap();
    Arc::new(DmarcFilter::new(cfg, Arc::new(z)))
}

async fn run(filter: Arc<DmarcFilter>, conn: &Connection, msg: &Message) -> (Outcome, Outcome) {
    let (mta, milter) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        serve_connection(milter, DmarcMilter::new(filter), &ServerConfig::default()).await
    });
    let mut client = Client::negotiate(mta, ClientConfig::default())
        .await
        .unwrap();
    let c = client.connection(conn).await.unwrap();
    let m = client.message(msg).await.unwrap();
    client.quit().await.unwrap();
    server.await.unwrap().unwrap();
    (c, m)
}

fn message(sender: &str, raw: &str) -> Message {
    let mut m = Message::parse(
        format!("<{sender}>").as_bytes(),
        &[b"<bob@dest.example>"],
        raw.as_bytes(),
    );
    m.macros = vec![(b'E', vec![(Bytes::from("i"), Bytes::from("4QUEUEID"))])];
    m
}

/// The inserted fields in the order they end up at the top of the message (each INSHEADER
/// at index 0 goes above the previous ones).
fn inserted_headers(o: &Outcome) -> Vec<(String, String)> {
    let mut top: Vec<(String, String)> = o
        .modifications
        .iter()
        .filter_map(|r| match r {
            Reply::InsHeader {
                index: 0,
                name,
                value,
            } => Some((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
            _ => None,
        })
        .collect();
    top.reverse();
    top
}

const CONF: &str = "AuthservID mx.example\nRejectFailures yes\nSPFSelfValidate yes\n";

#[tokio::test]
async fn reject_failure_gets_550_5_7_1() {
    let msg = message(
        "mallory@spammer.example",
        "From: Alice <alice@reject.example>\r\nSubject: x\r\n\r\nbody\r\n",
    );
    let (_, o) = run(filter(CONF), &Connection::default(), &msg).await;
    assert_eq!(
        o.decision,
        Reply::ReplyCode(Bytes::from_static(
            b"550 5.7.1 rejected by DMARC policy for reject.example"
        ))
    );
    assert!(inserted_headers(&o).is_empty());
}

#[tokio::test]
async fn none_failure_is_accepted_with_dmarc_fail() {
    let msg = message(
        "mallory@spammer.example",
        "From: a@none.example\r\nSubject: x\r\n\r\nbody\r\n",
    );
    let (_, o) = run(filter(CONF), &Connection::default(), &msg).await;
    assert_eq!(o.decision, Reply::Accept);
    let h = inserted_headers(&o);
    assert_eq!(
        h[0],
        (
            "Authentication-Results".into(),
            "mx.example; dmarc=fail (p=none dis=none) header.from=none.example".into()
        )
    );
    assert!(
        h[1].1
            .starts_with("mx.example; spf=none smtp.mailfrom=spammer.example")
    );
}

#[tokio::test]
async fn spf_aligned_mail_passes() {
    let msg = message(
        "alice@reject.example",
        "From: Alice <alice@reject.example>\r\nSubject: x\r\n\r\nbody\r\n",
    );
    let (_, o) = run(filter(CONF), &Connection::default(), &msg).await;
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(
        inserted_headers(&o),
        vec![
            (
                "Authentication-Results".into(),
                "mx.example; dmarc=pass (p=reject dis=none) header.from=reject.example".into()
            ),
            (
                "Authentication-Results".into(),
                "mx.example; spf=pass smtp.mailfrom=reject.example".into()
            ),
        ]
    );
}

#[tokio::test]
async fn quarantine_uses_the_milter_quarantine_when_asked() {
    let msg = message(
        "mallory@spammer.example",
        "From: a@quar.example\r\n\r\nbody\r\n",
    );
    let conf = format!("{CONF}HoldQuarantinedMessages yes\n");
    let (_, o) = run(filter(&conf), &Connection::default(), &msg).await;
    assert_eq!(o.decision, Reply::Continue);
    assert!(
        o.modifications
            .contains(&Reply::Quarantine(Bytes::from_static(
                b"quarantined by DMARC policy for quar.example"
            )))
    );
}

#[tokio::test]
async fn ignored_hosts_and_authenticated_clients_are_not_evaluated() {
    let msg = message(
        "mallory@spammer.example",
        "From: a@reject.example\r\n\r\nbody\r\n",
    );
    let local = Connection {
        addr: ConnAddr::Inet {
            port: 1,
            address: Bytes::from_static(b"127.0.0.1"),
        },
        ..Connection::default()
    };
    let (c, o) = run(filter(CONF), &local, &msg).await;
    assert_eq!(c.decision, Reply::Accept);
    assert_eq!(o.decision, Reply::Accept);
    let mut authed = msg.clone();
    authed.macros.push((
        b'M',
        vec![(Bytes::from("{auth_authen}"), Bytes::from("alice"))],
    ));
    let conf = format!("{CONF}IgnoreAuthenticatedClients yes\n");
    let (_, o) = run(filter(&conf), &Connection::default(), &authed).await;
    assert_eq!(o.decision, Reply::Accept);
    let (_, o) = run(filter(CONF), &Connection::default(), &authed).await;
    assert!(matches!(o.decision, Reply::ReplyCode(_)));
}

/// Standard base64 (the `base64` crate mailstack already uses).
fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// DKIMSelfValidate: the handler streams the body through the DKIM hashes (folded
/// DKIM-Signature, HDR_LEADSPC negotiated, so added values carry their leading space) and
/// DMARC passes on the aligned signature even
/// with a foreign envelope; a tampered body is rejected.
#[tokio::test]
async fn in_process_dkim_through_the_milter() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    let record = format!("v=DKIM1; k=ed25519; p={}", b64(&key.public_key()));
    let mut z = MemoryResolver::new();
    z.add(
        "_dmarc.reject.example",
        MemoryRecord::Txt(b"v=DMARC1; p=reject".to_vec()),
    )
    .add(
        "sel._domainkey.reject.example",
        MemoryRecord::Txt(record.into_bytes()),
    );
    let cfg = DmarcConfig::parse(
        Path::new("opendmarc.conf"),
        "AuthservID mx.example\nRejectFailures yes\nDKIMSelfValidate yes\n",
    )
    .unwrap();
    let filter = Arc::new(DmarcFilter::new(cfg, Arc::new(z)));
    let body = "Hello\r\n".repeat(20_000) + "  \r\n";
    let msg = format!(
        "From: Alice <alice@reject.example>\r\nTo: bob@dest.example\r\nSubject: hi\r\n\r\n{body}"
    );
    let sig = DkimSigner::from_key(key)
        .domain("reject.example")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        // Signed without the trailing whitespace-only line: relaxed canonicalization ignores it.
        .sign(&msg.as_bytes()[..msg.len() - 4])
        .unwrap();
    let signed = format!("{}{msg}", sig.to_header());
    let (_, o) = run(
        filter.clone(),
        &Connection::default(),
        &message("bounce@elsewhere.example", &signed),
    )
    .await;
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(
        inserted_headers(&o)[0].1,
        " mx.example; dmarc=pass (p=reject dis=none) header.from=reject.example"
    );
    let tampered = signed.replacen("Hello", "Hellp", 1);
    let (_, o) = run(
        filter,
        &Connection::default(),
        &message("bounce@elsewhere.example", &tampered),
    )
    .await;
    assert!(matches!(o.decision, Reply::ReplyCode(_)), "{o:?}");
}

//! The DMARC filter behind the generic milter adapter (`filter::Milter`, as `dmarc-milter`
//! serves it), driven by milter-proto's MTA-side client (Postfix's offer), with
//! an in-memory DNS zone: p=reject failure → `550 5.7.1`, p=none failure → accepted with
//! `dmarc=fail`, pass → `dmarc=pass`; IgnoreHosts and IgnoreAuthenticatedClients skip.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use mailstack::dmarc::{DmarcConfig, DmarcFilter};
use mailstack::dns::{MemoryRecord, MemoryResolver};
use mailstack::filter::Milter;
use milter_proto::ConnAddr;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message, Outcome};
use milter_proto::server::{ServerConfig, serve_connection};

fn filter(conf: &str) -> Arc<DmarcFilter> {
    Arc::new(dmarc(conf))
}

fn dmarc(conf: &str) -> DmarcFilter {
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
    DmarcFilter::new(cfg, Arc::new(z))
}

async fn run(filter: Arc<DmarcFilter>, conn: &Connection, msg: &Message) -> (Outcome, Outcome) {
    let (mta, milter) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        serve_connection(milter, Milter::new(filter), &ServerConfig::default()).await
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
/// at index 0 goes above the previous ones). The adapter negotiates `SMFIP_HDR_LEADSPC`, so
/// every value carries its leading space (checked), removed here.
fn inserted_headers(o: &Outcome) -> Vec<(String, String)> {
    let mut top: Vec<(String, String)> = o
        .modifications
        .iter()
        .filter_map(|r| match r {
            Reply::InsHeader {
                index: 0,
                name,
                value,
            } => {
                let value = String::from_utf8_lossy(value);
                let value = value
                    .strip_prefix(' ')
                    .expect("HDR_LEADSPC: a leading space");
                Some((String::from_utf8_lossy(name).into_owned(), value.to_owned()))
            }
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
    // The one verdict table answers ACCEPT after QUARANTINE (the old DMARC handler said
    // CONTINUE; at end of message both accept the message into the hold queue).
    assert_eq!(o.decision, Reply::Accept);
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
        "mx.example; dmarc=pass (p=reject dis=none) header.from=reject.example"
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

/// An earlier filter in a chain that hands on fixed SPF and DKIM results (what the SPF and
/// DKIM filters do in `mailstackd`).
struct Earlier(mailstack::filter::AuthFacts);

#[async_trait::async_trait]
impl mailstack::filter::Filter for Earlier {
    type Message = ();

    fn needs(&self) -> mailstack::filter::Needs {
        mailstack::filter::Needs::default()
    }

    async fn mail(
        &self,
        _: &mailstack::filter::Connection,
        _: &mailstack::filter::Envelope,
    ) -> mailstack::filter::Start<()> {
        mailstack::filter::Start::Message(())
    }

    async fn end_of_message(
        &self,
        _: (),
        _: &mailstack::filter::EndOfMessage<'_>,
    ) -> mailstack::filter::Verdict {
        let mut v = mailstack::filter::Verdict::accept();
        v.facts = self.0.clone();
        v
    }
}

/// SPF `fail` for the envelope domain and no DKIM signature, as an SPF and a DKIM filter
/// would find for forged mail.
fn failing_facts(envelope_domain: &str) -> mailstack::filter::AuthFacts {
    let mut f = mailstack::filter::AuthFacts::default();
    f.spf = Some(mailstack::dmarc::SpfInput {
        domain: envelope_domain.into(),
        identity: mailstack::spf::Identity::MailFrom,
        result: mailstack::spf::SpfResult::Fail,
    });
    f.dkim = Some(Vec::new());
    f
}

async fn run_chain(
    filter: DmarcFilter,
    facts: mailstack::filter::AuthFacts,
    conn: &Connection,
    msg: &Message,
) -> Outcome {
    let chain = mailstack::filter::Chain::new(Earlier(facts), filter);
    let (mta, milter) = tokio::io::duplex(64 * 1024);
    let h = Milter::new(Arc::new(chain));
    let server =
        tokio::spawn(async move { serve_connection(milter, h, &ServerConfig::default()).await });
    let mut client = Client::negotiate(mta, ClientConfig::default())
        .await
        .unwrap();
    client.connection(conn).await.unwrap();
    let m = client.message(msg).await.unwrap();
    client.quit().await.unwrap();
    server.await.unwrap().unwrap();
    m
}

/// Forged upstream results carrying our own authserv-id: alone, dmarc-milter trusts them
/// (as OpenDMARC does; Postfix is expected to strip such fields). In a chain, the SPF and
/// DKIM results of the earlier filters are used and the header fields are never read: the
/// forged `pass` does not save the message, and our own SPF check does not run.
#[tokio::test]
async fn in_a_chain_earlier_results_are_used_never_the_headers() {
    let forged = "Authentication-Results: mx.example; spf=pass smtp.mailfrom=reject.example;\r\n\
                  \tdkim=pass header.d=reject.example header.s=sel\r\n\
                  From: Alice <alice@reject.example>\r\nSubject: x\r\n\r\nbody\r\n";
    let msg = message("mallory@reject.example", forged);
    let (_, alone) = run(filter(CONF), &Connection::default(), &msg).await;
    assert_eq!(alone.decision, Reply::Accept, "{alone:?}");
    let o = run_chain(
        dmarc(CONF),
        failing_facts("reject.example"),
        &Connection::default(),
        &msg,
    )
    .await;
    assert_eq!(
        o.decision,
        Reply::ReplyCode(Bytes::from_static(
            b"550 5.7.1 rejected by DMARC policy for reject.example"
        ))
    );
    // With p=none the message is delivered: the only field is the dmarc= one (no self-SPF
    // field, SPFSelfValidate is not needed when SPF already ran).
    let msg = message(
        "mallory@spammer.example",
        &forged.replace("alice@reject.example", "alice@none.example"),
    );
    let o = run_chain(
        dmarc(CONF),
        failing_facts("spammer.example"),
        &Connection::default(),
        &msg,
    )
    .await;
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(
        inserted_headers(&o),
        vec![(
            "Authentication-Results".into(),
            "mx.example; dmarc=fail (p=none dis=none) header.from=none.example".into()
        )]
    );
}

/// In a chain CONNECT is advisory (another filter wants the connection): a client in
/// IgnoreHosts must still be skipped at MAIL.
#[tokio::test]
async fn in_a_chain_ignored_hosts_are_skipped_at_mail() {
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
    let o = run_chain(dmarc(CONF), failing_facts("spammer.example"), &local, &msg).await;
    assert_eq!(o.decision, Reply::Accept);
    assert!(inserted_headers(&o).is_empty());
    let o = run_chain(
        dmarc(CONF),
        failing_facts("spammer.example"),
        &Connection::default(),
        &msg,
    )
    .await;
    assert!(matches!(o.decision, Reply::ReplyCode(_)), "{o:?}");
}

/// dmarc-milter asks the MTA for the body only when it verifies DKIM itself.
#[tokio::test]
async fn the_body_is_asked_for_only_with_dkim_self_validate() {
    use mailstack::filter::Filter as _;
    let n = filter(CONF).needs();
    assert!(n.headers && !n.body);
    let n = filter(&format!("{CONF}DKIMSelfValidate yes\n")).needs();
    assert!(n.headers && n.body);
    // The negotiation switches body events off (SMFIP_NOBODY).
    let (mta, milter) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        serve_connection(milter, Milter::new(filter(CONF)), &ServerConfig::default()).await
    });
    let client = Client::negotiate(mta, ClientConfig::default())
        .await
        .unwrap();
    assert!(
        client
            .negotiated()
            .protocol
            .contains(milter_proto::Protocol::NOBODY)
    );
    client.quit().await.unwrap();
    server.await.unwrap().unwrap();
}

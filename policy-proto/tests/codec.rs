//! Properties of the request decoder and the reply codec: round trips, every strict prefix of
//! a request needs more, arbitrary bytes never panic; plus the limits and the protocol rules.

use bytes::BytesMut;
use policy_proto::{
    Action, ActionError, AttributeError, DecodeError, PolicyRequest, ProtocolState, ReplyDecoder,
    RequestDecoder,
};

fn decode_reply(buf: &mut BytesMut) -> Result<Option<Action>, DecodeError> {
    ReplyDecoder::new().decode(buf)
}
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z_]{1,20}"
}

fn value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn request() -> impl Strategy<Value = PolicyRequest> {
    prop::collection::vec((name(), value()), 1..30).prop_map(|attrs| {
        let mut r = PolicyRequest::new();
        for (n, v) in attrs {
            r.push(n, v).unwrap();
        }
        r
    })
}

fn text() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,30}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

/// Any valid action: every variant, random arguments.
fn action() -> impl Strategy<Value = Action> {
    let word = "[a-z0-9.]{1,10}";
    prop_oneof![
        Just(Action::Ok),
        Just(Action::Dunno),
        opt_text().prop_map(|t| Action::reject(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::defer(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::defer_if_reject(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::defer_if_permit(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::warn(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::info(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::hold(t.as_deref()).unwrap()),
        opt_text().prop_map(|t| Action::discard(t.as_deref()).unwrap()),
        (
            4u16..6,
            0u16..100,
            prop::option::of((0u16..1000, 0u16..1000)),
            "[A-Za-z][ -~]{0,30}"
        )
            .prop_map(|(c, n, e, t)| {
                let code = c * 100 + n;
                let enh = e.map(|(s, d)| format!("{c}.{s}.{d}"));
                Action::smtp(code, enh.as_deref(), &t).unwrap()
            }),
        ("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,30}")
            .prop_map(|(n, v)| Action::prepend(&format!("{n}: {v}")).unwrap()),
        (word, word).prop_map(|(a, b)| Action::filter(&format!("{a}:{b}")).unwrap()),
        (word, word).prop_map(|(a, b)| Action::redirect(&format!("{a}@{b}")).unwrap()),
        (word, word).prop_map(|(a, b)| Action::bcc(&format!("{a}@{b}")).unwrap()),
    ]
}

proptest! {
    #[test]
    fn every_action_round_trips_and_its_prefixes_need_more(a in action()) {
        let mut wire = BytesMut::new();
        a.encode(&mut wire);
        prop_assert!(wire.ends_with(b"\n\n") && !wire[..wire.len() - 2].contains(&b'\n'));
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(ReplyDecoder::new().decode(&mut part).unwrap(), None);
            prop_assert_eq!(part.len(), cut);
        }
        prop_assert_eq!(decode_reply(&mut wire).unwrap(), Some(a));
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn request_round_trips_and_reencodes_identically(req in request()) {
        let mut wire = BytesMut::new();
        req.encode(&mut wire);
        let bytes = wire.clone();
        let got = RequestDecoder::new().decode(&mut wire).unwrap().unwrap();
        prop_assert!(wire.is_empty());
        prop_assert_eq!(&got, &req);
        let mut again = BytesMut::new();
        got.encode(&mut again);
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn every_strict_prefix_needs_more(req in request()) {
        let mut wire = BytesMut::new();
        req.encode(&mut wire);
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(RequestDecoder::new().decode(&mut part).unwrap(), None);
            prop_assert_eq!(part.len(), cut, "need-more consumed bytes");
        }
    }

    #[test]
    fn byte_at_a_time_equals_whole(req in request()) {
        let mut wire = BytesMut::new();
        req.encode(&mut wire);
        let mut dec = RequestDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(r) = dec.decode(&mut buf).unwrap() {
                got = Some(r);
            }
        }
        prop_assert_eq!(got, Some(req));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        let mut dec = RequestDecoder::with_limits(64, 8, 256);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
        let mut buf = BytesMut::from(&data[..]);
        let _ = decode_reply(&mut buf);
        let _ = Action::parse(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn valid_actions_round_trip(code in 400u16..600, text in "[!-~][ -~]{0,30}", sub in 0u16..999) {
        let enh = format!("{}.{}.{}", code / 100, sub % 10, sub);
        for a in [
            Action::smtp(code, Some(&enh), &text).unwrap(),
            Action::smtp(code, None, &text).unwrap(),
            Action::reject(Some(&text)).unwrap(),
            Action::defer_if_permit(Some(&text)).unwrap(),
            Action::prepend(&format!("X-Test: {text}")).unwrap(),
            Action::hold(None).unwrap(),
        ] {
            let mut wire = BytesMut::new();
            a.encode(&mut wire);
            prop_assert_eq!(decode_reply(&mut wire).unwrap(), Some(a));
            prop_assert!(wire.is_empty());
        }
    }
}

#[test]
fn many_requests_on_one_stream_and_values_with_equals() {
    let mut buf = BytesMut::from(
        &b"request=smtpd_access_policy\nsender=a=b@example.com\nx_future=1\nsender=last@example.com\n\nrequest=smtpd_access_policy\n\nrequ"[..],
    );
    let mut dec = RequestDecoder::new();
    let first = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        first.sender(),
        Some("last@example.com"),
        "duplicates: last wins"
    );
    assert_eq!(
        first.attributes()[1].1,
        "a=b@example.com",
        "first '=' splits"
    );
    assert_eq!(first.unknown().collect::<Vec<_>>(), [("x_future", "1")]);
    let second = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(second.request(), Some("smtpd_access_policy"));
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert!(dec.in_request());
    assert_eq!(&buf[..], b"requ");
}

#[test]
fn limits_are_enforced_before_the_buffer_grows_further() {
    let mut dec = RequestDecoder::with_limits(16, 2, 1024);
    let mut buf = BytesMut::from(&b"name=0123456789abcdef"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::LineTooLong { limit: 16 })
    );
    let mut dec = RequestDecoder::with_limits(16, 2, 1024);
    let mut buf = BytesMut::from(&b"a=1\nb=2\nc=3\n"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::TooManyAttributes { limit: 2 })
    );
    let mut dec = RequestDecoder::with_limits(1024, 100, 32);
    let mut buf = BytesMut::from(&b"a=1\nb=2\nc=3\nd=4\ne=5\nf=6\ng=7\nh=8\ni=9\n"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::RequestTooLarge { limit: 32 })
    );
    for bad in [&b"noequals\n\n"[..], b"=v\n\n", b"a=\0\n\n"] {
        let mut buf = BytesMut::from(bad);
        assert!(RequestDecoder::new().decode(&mut buf).is_err(), "{bad:?}");
    }
}

#[test]
fn misreadable_replies_cannot_be_built() {
    assert_eq!(Action::smtp(550, None, ""), Err(ActionError::BadCode));
    assert_eq!(Action::smtp(250, None, "ok"), Err(ActionError::BadCode));
    assert_eq!(
        Action::smtp(550, Some("4.7.1"), "x"),
        Err(ActionError::BadEnhancedCode)
    );
    assert_eq!(
        Action::reject(Some("a\nb")),
        Err(ActionError::ControlChar("REJECT text"))
    );
    assert_eq!(
        Action::prepend("X-A: b\n\tc"),
        Err(ActionError::ControlChar("PREPEND header"))
    );
    assert_eq!(Action::prepend("no header"), Err(ActionError::BadHeader));
    assert_eq!(
        Action::redirect("a b@c"),
        Err(ActionError::BadArgument("REDIRECT/BCC address"))
    );
    assert_eq!(Action::parse("550"), Err(ActionError::BadCode));
    assert_eq!(Action::parse("1234"), Err(ActionError::BadCode));
    assert_eq!(Action::parse("550 5.7.1"), Err(ActionError::BadCode));
    assert_eq!(
        Action::parse("PERMIT_MYNETWORKS"),
        Err(ActionError::UnknownAction)
    );
    assert_eq!(Action::parse("RELAY"), Err(ActionError::UnknownAction));
    assert_eq!(Action::parse(" OK"), Err(ActionError::UnknownAction));
    assert_eq!(
        Action::redirect("nobody"),
        Err(ActionError::BadArgument("REDIRECT/BCC address"))
    );
    assert_eq!(
        Action::filter("smtp"),
        Err(ActionError::BadArgument("FILTER transport:destination"))
    );
    assert_eq!(
        Action::reject(Some(" leading")),
        Err(ActionError::LeadingSpace("REJECT text"))
    );
    assert_eq!(
        Action::reject(Some("tab\there")),
        Err(ActionError::ControlChar("REJECT text"))
    );
    let mut wire = BytesMut::from(&b"foo=bar\naction=DUNNO\n\n"[..]);
    assert_eq!(decode_reply(&mut wire), Ok(Some(Action::Dunno)));
    let mut wire = BytesMut::from(&b"\n"[..]);
    assert_eq!(decode_reply(&mut wire), Err(DecodeError::MissingAction));
    let mut wire = BytesMut::from(&b"action=550\n\n"[..]);
    assert_eq!(
        decode_reply(&mut wire),
        Err(DecodeError::BadAction(ActionError::BadCode))
    );
    let mut wire = BytesMut::from(&b"action=REJECT \xff\n\n"[..]);
    assert_eq!(decode_reply(&mut wire), Err(DecodeError::NotUtf8));
    let mut wire = BytesMut::from(&b"garbage\n\n"[..]);
    assert_eq!(decode_reply(&mut wire), Err(DecodeError::MissingEquals));
}

#[test]
fn typed_accessors_cover_postfix_3_12_attributes() {
    let wire = "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
        client_address=192.0.2.1\nclient_name=mail.example.com\nreverse_client_name=mail.example.com\n\
        client_port=41234\nhelo_name=mail.example.com\nsender=a@example.com\nrecipient=b@dest.example\n\
        recipient_count=0\nqueue_id=\nstress=\nsize=1234\netrn_domain=\nencryption_protocol=TLSv1.3\n\
        encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\nsasl_method=\nsasl_username=\n\
        sasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n\
        instance=3e8.6565a1f3.7d0c1.0\npolicy_context=\nserver_address=192.0.2.25\nserver_port=25\n\
        compatibility_level=3.6\nmail_version=3.12.0\ntls_sni=mx.dest.example\n\n";
    let mut buf = BytesMut::from(wire.as_bytes());
    let r = RequestDecoder::new().decode(&mut buf).unwrap().unwrap();
    assert_eq!(r.unknown().count(), 0);
    assert_eq!(r.protocol_state(), Some(ProtocolState::Rcpt));
    assert_eq!(r.client_address(), Some("192.0.2.1".parse().unwrap()));
    assert_eq!(r.server_address(), Some("192.0.2.25".parse().unwrap()));
    assert!(!r.stress());
    assert_eq!(r.sender_address(), Some("a@example.com"));
    assert_eq!(r.client_port(), Some(41234));
    assert_eq!(r.server_port(), Some(25));
    assert_eq!(r.size(), Some(1234));
    assert_eq!(r.encryption_keysize(), Some(256));
    assert_eq!(r.recipient_count(), Some(0));
    assert_eq!(r.tls_sni(), Some("mx.dest.example"));
    assert_eq!(r.mail_version(), Some("3.12.0"));
    assert_eq!(r.queue_id(), Some(""));
    assert_eq!(r.attributes().len(), 32);
}

#[test]
fn actions_read_as_postfix_reads_them() {
    let cases: &[(&str, Action)] = &[
        ("ok", Action::Ok),
        ("OK whatever follows", Action::Ok),
        ("dunno", Action::Dunno),
        ("reject", Action::Reject(None)),
        (
            "REJECT\t  5.7.1 go away",
            Action::reject(Some("5.7.1 go away")).unwrap(),
        ),
        ("DEFER", Action::Defer(None)),
        ("defer_if_reject", Action::DeferIfReject(None)),
        (
            "550 5.7.23 SPF fail",
            Action::smtp(550, Some("5.7.23"), "SPF fail").unwrap(),
        ),
        ("421 bye", Action::smtp(421, None, "bye").unwrap()),
        ("PREPEND X-A: b", Action::prepend("X-A: b").unwrap()),
        ("WARN", Action::Warn(None)),
        ("INFO note", Action::info(Some("note")).unwrap()),
        ("HOLD", Action::Hold(None)),
        ("DISCARD spam", Action::discard(Some("spam")).unwrap()),
        (
            "FILTER smtp:[127.0.0.1]:10025",
            Action::filter("smtp:[127.0.0.1]:10025").unwrap(),
        ),
        (
            "REDIRECT a@b.example",
            Action::redirect("a@b.example").unwrap(),
        ),
        ("BCC a@b.example", Action::bcc("a@b.example").unwrap()),
    ];
    for (wire, want) in cases {
        assert_eq!(&Action::parse(wire).unwrap(), want, "{wire}");
        let again: Action = want.to_string().parse().unwrap();
        assert_eq!(&again, want);
    }
    // Postfix reads a leading DSN in 4NN/5NN text as the enhanced code: so do we.
    let a = Action::smtp(550, None, "5.7.1 no").unwrap();
    assert_eq!(a.to_string(), "550 5.7.1 no");
    match a {
        Action::Smtp(r) => assert_eq!(
            (r.code(), r.enhanced(), r.text()),
            (550, Some("5.7.1"), "no")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(Action::smtp(450, None, "4.7.1"), Err(ActionError::BadCode));
    assert_eq!(
        Action::smtp(550, Some("5.7"), "x"),
        Err(ActionError::BadEnhancedCode)
    );
    assert_eq!(
        Action::smtp(550, Some("5.1234.1"), "x"),
        Err(ActionError::BadEnhancedCode)
    );
}

#[test]
fn requests_refuse_what_postfix_never_sends() {
    let mut r = PolicyRequest::new();
    assert_eq!(r.push("", "v"), Err(AttributeError::BadName));
    assert_eq!(r.push("a=b", "v"), Err(AttributeError::BadName));
    assert_eq!(r.push("a", "v\nsender=x"), Err(AttributeError::BadValue));
    assert_eq!(r.push("a", "v\0"), Err(AttributeError::BadValue));
    assert!(r.attributes().is_empty());
    let r = PolicyRequest::new()
        .with("sender", "")
        .and_then(|r| r.with("stress", "yes"))
        .unwrap();
    assert_eq!(r.sender(), Some(""));
    assert_eq!(r.sender_address(), None, "empty sender is the null sender");
    assert!(r.stress());
}

#[test]
fn replies_split_across_reads_and_pipelined() {
    let wire = b"x=1\naction=REJECT no\nextra=2\n\naction=DUNNO\n\n";
    let mut dec = ReplyDecoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire {
        buf.extend_from_slice(&[*b]);
        while let Some(a) = dec.decode(&mut buf).unwrap() {
            got.push(a);
        }
    }
    assert_eq!(got, [Action::reject(Some("no")).unwrap(), Action::Dunno]);
    assert!(!dec.in_reply());
}

#[test]
fn replies_keep_a_checked_spelling_or_name_a_restriction_class() {
    use policy_proto::Reply;
    let r = Reply::spelled("defer_if_permit 4.7.24 later").unwrap();
    assert_eq!(r.as_str(), "defer_if_permit 4.7.24 later");
    assert_eq!(
        r.action(),
        Some(&Action::defer_if_permit(Some("4.7.24 later")).unwrap())
    );
    let mut out = BytesMut::new();
    r.encode(&mut out);
    assert_eq!(&out[..], b"action=defer_if_permit 4.7.24 later\n\n");
    assert_eq!(
        Reply::spelled("dunno mock text").unwrap().action(),
        Some(&Action::Dunno)
    );
    assert_eq!(Reply::spelled("550"), Err(ActionError::BadCode));
    assert_eq!(
        Reply::spelled("spf_passed"),
        Err(ActionError::UnknownAction)
    );
    assert_eq!(
        Reply::spelled("dunno a\nb"),
        Err(ActionError::ControlChar("action"))
    );
    let c = Reply::restriction_class("spf_passed").unwrap();
    assert_eq!((c.as_str(), c.action()), ("spf_passed", None));
    for bad in [
        "",
        "reject",
        "DUNNO",
        "550",
        "hash:/etc/x",
        "two words",
        "_x",
        "a-b",
    ] {
        assert_eq!(
            Reply::restriction_class(bad),
            Err(ActionError::BadArgument("restriction class name")),
            "{bad}"
        );
    }
    assert_eq!(Reply::from(Action::Dunno).as_str(), "DUNNO");
}

/// Found by the proptest: reply text such as `.` or `1.5` was taken for an enhanced status
/// code and refused. Postfix takes only `class.subject.detail` (class 2, 4 or 5, 1 to 3 digits
/// each) as one; anything else is text.
#[test]
fn only_postfix_shaped_enhanced_codes_are_taken_out_of_the_text() {
    for text in [".", "1.5", "9.9.9 text", "5.7", "5.7.1.2"] {
        let a = Action::smtp(550, None, text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let mut wire = BytesMut::new();
        a.encode(&mut wire);
        assert_eq!(&wire[..], format!("action=550 {text}\n\n").as_bytes());
    }
    let mut wire = BytesMut::new();
    Action::smtp(550, None, "5.7.1 go away")
        .unwrap()
        .encode(&mut wire);
    assert_eq!(&wire[..], b"action=550 5.7.1 go away\n\n");
    assert!(
        Action::smtp(550, None, "5.7.1").is_err(),
        "a code alone is no text"
    );
    assert!(Action::smtp(450, None, "4.7.1").is_err());
}

//! The DMARC zone and messages that `dmarc_vs_opendmarc` sends to OpenDMARC and
//! `dmarc-milter`, shared with `mailstackd_vs_daemons` (mailstackd against the separate
//! daemons).

use super::{Rec, Zone};

/// The DMARC and SPF records the cases rely on.
pub fn zone() -> Zone {
    let mut z = Zone::default();
    z.txt("_dmarc.reject.example", "v=DMARC1; p=reject")
        .txt("_dmarc.none.example", "v=DMARC1; p=none")
        .txt("_dmarc.quar.example", "v=DMARC1; p=quarantine")
        .txt("_dmarc.org.example", "v=DMARC1; p=none; sp=reject")
        .txt(
            "_dmarc.strict.example",
            "v=DMARC1; p=reject; aspf=s; adkim=s",
        )
        .txt("_dmarc.bad.example", "v=DMARC1; p=bogus")
        .txt("reject.example", "v=spf1 ip4:192.0.2.1 -all")
        .txt("org.example", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.fail.example", "v=DMARC1; p=none")
        .add("_dmarc.slow.example", Rec::Timeout)
        .txt("fail.example", "v=spf1 -all")
        .txt("_dmarc.orgdomain.com", "v=DMARC1; p=none; sp=reject")
        .txt("_dmarc.orgnone.com", "v=DMARC1; p=reject; sp=none")
        .txt(
            "_dmarc.strict.example.com",
            "v=DMARC1; p=reject; aspf=s; adkim=s",
        );
    z
}

/// One case: what it shows, the envelope sender, the header fields above `Subject: test`
/// (the body is `body`).
pub type Case = (&'static str, &'static str, String);

/// The cases on which OpenDMARC and `dmarc-milter` agree (with `AuthservID` and
/// `TrustedAuthservIDs` `mx.example`, `RejectFailures`, the public suffix list). Several
/// carry upstream `Authentication-Results` or `Received-SPF` fields a sender could forge.
pub fn shared() -> Vec<Case> {
    let ar = "Authentication-Results: mx.example;";
    let spf_ar = |d: &str| format!("{ar} spf=pass smtp.mailfrom={d}\r\nFrom: a@reject.example\r\n");
    let dkim_ar = |d: &str, from: &str| {
        format!("{ar}\r\n\tdkim=pass (2048-bit key) header.d={d} header.s=s1\r\nFrom: {from}\r\n")
    };
    let from = |d: &str| format!("From: a@{d}\r\n");
    vec![
        (
            "p=reject failure",
            "m@spammer.example",
            from("reject.example"),
        ),
        ("p=none failure", "m@spammer.example", from("none.example")),
        (
            "p=quarantine failure",
            "m@spammer.example",
            from("quar.example"),
        ),
        (
            "trusted SPF pass",
            "a@reject.example",
            spf_ar("reject.example"),
        ),
        (
            "SPF pass for another envelope domain",
            "m@spammer.example",
            spf_ar("reject.example"),
        ),
        (
            "SPF pass for the HELO identity",
            "a@reject.example",
            format!("{ar} spf=pass smtp.helo=reject.example\r\nFrom: a@reject.example\r\n"),
        ),
        (
            "trusted DKIM pass, relaxed subdomain",
            "m@spammer.example",
            dkim_ar("mail.reject.example", "Alice <a@reject.example>"),
        ),
        (
            "trusted DKIM pass, foreign domain",
            "m@spammer.example",
            dkim_ar("other.example", "a@reject.example"),
        ),
        (
            "untrusted DKIM pass",
            "m@spammer.example",
            "Authentication-Results: evil.example; dkim=pass header.d=reject.example\r\n\
             From: a@reject.example\r\n"
                .to_owned(),
        ),
        (
            "Received-SPF pass",
            "a@reject.example",
            "Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.1; \
             helo=client.example; envelope-from=a@reject.example; receiver=mx.example\r\n\
             From: a@reject.example\r\n"
                .to_owned(),
        ),
        (
            "Received-SPF pass for another envelope",
            "m@reject.example",
            "Received-SPF: Pass (mailfrom) identity=mailfrom; envelope-from=a@reject.example\r\n\
             From: a@reject.example\r\n"
                .to_owned(),
        ),
        (
            "subdomain policy sp=reject (PSL)",
            "m@spammer.example",
            from("sub.orgdomain.com"),
        ),
        (
            "subdomain policy sp=none (PSL)",
            "m@spammer.example",
            from("sub.orgnone.com"),
        ),
        (
            "no DMARC record",
            "m@spammer.example",
            from("nodmarc.example"),
        ),
        (
            "unparseable record",
            "m@spammer.example",
            from("bad.example"),
        ),
        (
            "From with two domains",
            "m@spammer.example",
            "From: a@none.example, b@reject.example\r\n".to_owned(),
        ),
    ]
}

//! The policy decisions of `mailstack::spf::policyd` offline (in-memory DNS): the expected
//! texts are python-policyd-spf 3.0.4's, as captured in the golden transcripts
//! (`examples/tests/spf_golden.rs` compares the two daemons live), plus the options the golden
//! test does not exercise (whitelists by domain, HELO and PTR; pass restrictions; the bounded
//! instance cache) and our documented differences.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use mailstack::dns::{MemoryRecord, MemoryResolver};
use mailstack::spf::policyd::{PolicydConfig, SpfAction, SpfPolicy, SpfRequest};

fn zone() -> MemoryResolver {
    let mut z = MemoryResolver::new();
    let txt = |s: &str| MemoryRecord::Txt(s.as_bytes().to_vec());
    z.add("pass.example", txt("v=spf1 ip4:192.0.2.1 -all"))
        .add("fail.example", txt("v=spf1 -all"))
        .add("soft.example", txt("v=spf1 ~all"))
        .add("softa.example", txt("v=spf1 a ~all"))
        .add("mail.pass.example", txt("v=spf1 a -all"))
        .add(
            "mail.pass.example",
            MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 1)),
        )
        .add("mail.fail.example", txt("v=spf1 -all"))
        .add("relay.example", txt("v=spf1 ip4:192.0.2.50 -all"))
        .add(
            "trusted.helo.example",
            MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 51)),
        )
        .add(
            "52.2.0.192.in-addr.arpa",
            MemoryRecord::Ptr("mx.partner.example".into()),
        );
    z
}

fn policy(conf: &str) -> SpfPolicy {
    let (config, warnings) = PolicydConfig::parse(Path::new("test.conf"), conf).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    SpfPolicy::new(config, Arc::new(zone()))
}

fn req(client: &str, helo: &str, sender: &str, instance: &str) -> SpfRequest {
    SpfRequest::from_attrs([
        ("request", "smtpd_access_policy"),
        ("client_address", client),
        ("helo_name", helo),
        ("sender", sender),
        ("recipient", "rcpt@dest.example"),
        ("instance", instance),
    ])
}

async fn answer(p: &SpfPolicy, client: &str, helo: &str, sender: &str, instance: &str) -> String {
    p.decide(&req(client, helo, sender, instance))
        .await
        .to_action_value()
}

#[tokio::test]
async fn default_configuration() {
    let p = policy("");
    assert_eq!(
        answer(&p, "192.0.2.1", "mail.pass.example", "u@pass.example", "i1").await,
        "prepend Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.1; helo=mail.pass.example; envelope-from=u@pass.example; receiver=dest.example "
    );
    assert_eq!(
        answer(&p, "192.0.2.1", "mail.pass.example", "u@pass.example", "i1").await,
        "dunno"
    );
    assert_eq!(
        answer(&p, "192.0.2.9", "helo.none.example", "u@fail.example", "i2").await,
        "550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=mfrom;id=u@fail.example;ip=192.0.2.9;r=dest.example"
    );
    // A rejected message stays rejected for its other recipients.
    assert!(
        answer(&p, "192.0.2.9", "helo.none.example", "u@fail.example", "i2")
            .await
            .starts_with("550 5.7.23 ")
    );
    assert_eq!(
        answer(&p, "192.0.2.9", "mail.fail.example", "", "i3").await,
        "550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=helo;id=mail.fail.example;ip=192.0.2.9;r=dest.example"
    );
    assert_eq!(answer(&p, "192.0.2.9", "", "", "i4").await, "dunno");
}

#[tokio::test]
async fn cve_2019_20790_header_names_the_mail_from_identity() {
    let p = policy("");
    // python-policyd-spf would prepend "Pass (sender SPF authorized) identity=helo".
    assert_eq!(
        answer(
            &p,
            "192.0.2.1",
            "mail.pass.example",
            "u@nosuch.example",
            "i1"
        )
        .await,
        "prepend Received-SPF: None (mailfrom) identity=mailfrom; client-ip=192.0.2.1; helo=mail.pass.example; envelope-from=u@nosuch.example; receiver=dest.example "
    );
}

#[tokio::test]
async fn whitelists_by_domain_helo_and_ptr() {
    let p = policy(
        "Domain_Whitelist = relay.example\nHELO_Whitelist = trusted.helo.example\nDomain_Whitelist_PTR = partner.example\n",
    );
    assert_eq!(
        answer(&p, "192.0.2.50", "x.example", "u@fail.example", "i1").await,
        "prepend X-Comment: SPF skipped for whitelisted relay domain - client-ip=192.0.2.50; helo=x.example; envelope-from=u@fail.example; receiver=dest.example "
    );
    assert_eq!(
        answer(
            &p,
            "192.0.2.51",
            "trusted.helo.example",
            "u@fail.example",
            "i2"
        )
        .await,
        "prepend X-Comment: SPF skipped for whitelisted HELO domain - client-ip=192.0.2.51; helo=trusted.helo.example; envelope-from=u@fail.example; receiver=dest.example "
    );
    assert_eq!(
        answer(&p, "192.0.2.52", "x.example", "u@fail.example", "i3").await,
        "prepend X-Comment: SPF skipped for PTR whitelisted relay domain - client-ip=192.0.2.52; helo=x.example; envelope-from=u@fail.example; receiver=dest.example "
    );
    // HELO whitelisted by name but resolving elsewhere: checked normally.
    assert!(
        answer(
            &p,
            "192.0.2.9",
            "trusted.helo.example",
            "u@fail.example",
            "i4"
        )
        .await
        .starts_with("550 5.7.23")
    );
}

#[tokio::test]
async fn reject_not_pass_domains_and_restrictions() {
    let p =
        policy("Reject_Not_Pass_Domains = soft.example\nMail_From_pass_restriction = spf_passed\n");
    assert_eq!(
        answer(&p, "192.0.2.9", "helo.none.example", "u@soft.example", "i1").await,
        "550 5.7.23 Message rejected due to: Receiver policy for SPF Softfail. Please see http://www.openspf.net/Why?s=mfrom;id=u@soft.example;ip=192.0.2.9;r=dest.example"
    );
    assert_eq!(
        answer(&p, "192.0.2.1", "x.example", "u@pass.example", "i2").await,
        "spf_passed"
    );
}

#[tokio::test]
async fn no_mail_only_rejects_the_literal_minus_all() {
    let p = policy("Mail_From_reject = Softfail\nNo_Mail = True\n");
    assert!(
        answer(&p, "192.0.2.9", "h.example", "u@softa.example", "i1")
            .await
            .starts_with("prepend Received-SPF: Softfail")
    );
    assert!(
        answer(&p, "192.0.2.9", "h.example", "u@fail.example", "i2")
            .await
            .starts_with("550 5.7.23")
    );
}

#[tokio::test]
async fn instance_cache_is_bounded() {
    let p = policy("Instance_Cache_Size = 2\n");
    for i in 0..3 {
        assert!(
            answer(
                &p,
                "192.0.2.1",
                "x.example",
                "u@pass.example",
                &format!("m{i}")
            )
            .await
            .starts_with("prepend ")
        );
    }
    // m0 was evicted: a late recipient of it gets the header again rather than growing memory.
    assert!(
        answer(&p, "192.0.2.1", "x.example", "u@pass.example", "m0")
            .await
            .starts_with("prepend ")
    );
    assert_eq!(
        answer(&p, "192.0.2.1", "x.example", "u@pass.example", "m2").await,
        "dunno"
    );
}

#[tokio::test]
async fn mock_and_unknown_keys() {
    let p = policy("Mock = True\n");
    assert_eq!(
        p.decide(&req("192.0.2.9", "h", "u@fail.example", "i"))
            .await,
        SpfAction::DunnoText("mock header field that should be ignored".into())
    );
    let err = PolicydConfig::parse(
        Path::new("/etc/x.conf"),
        "Mock = False\nHeader_Type = both\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/x.conf:2: Header_Type: expected SPF, AR or None, found \"both\""
    );
}

/// A HELO name or sender that is not a plain host name or address is quoted (RFC 7208 §9.1),
/// so it can never add an `identity=mailfrom` the DMARC reader would take; comments lose
/// the parentheses that could end them.
#[tokio::test]
async fn odd_helo_and_sender_values_are_quoted() {
    use mailstack::dmarc::{UpstreamContext, read_upstream};
    let p = policy("");
    let helo = "h\" identity=mailfrom; envelope-from=u@pass.example; x=\"";
    let got = answer(&p, "192.0.2.9", helo, "", "q1").await;
    assert_eq!(
        got,
        "prepend Received-SPF: None (no SPF record) identity=helo; client-ip=192.0.2.9; \
         helo=\"h\\\" identity=mailfrom; envelope-from=u@pass.example; x=\\\"\"; \
         envelope-from=<>; receiver=dest.example "
    );
    let value = got.strip_prefix("prepend Received-SPF: ").unwrap();
    let fields = [("Received-SPF".to_owned(), value.to_owned())];
    for envelope_from in ["u@pass.example", ""] {
        let ctx = UpstreamContext {
            envelope_from,
            spf_ignore_results: false,
        };
        assert_eq!(read_upstream(&fields, ctx, |_| false).spf, None);
    }
    let got = answer(&p, "192.0.2.1", "a b", "x y@pass.example", "q2").await;
    assert!(
        got.ends_with("helo=\"a b\"; envelope-from=\"x y@pass.example\"; receiver=dest.example "),
        "{got}"
    );
    let p = policy("Header_Type = AR\n");
    let got = answer(&p, "192.0.2.9", "x) dkim=pass (", "", "q3").await;
    assert!(
        got.ends_with(
            " smtp.helo=\"x) dkim=pass (\" (client-ip=192.0.2.9; helo=\"x dkim=pass \"; \
             envelope-from=<>; receiver=dest.example)"
        ),
        "{got}"
    );
}

/// Empty values stay bare as python-policyd-spf writes them (`envelope-from=;` in a bypass
/// header for the null sender): nothing in them can add a key.
#[tokio::test]
async fn empty_values_stay_bare() {
    let p = policy("Whitelist = 192.0.2.60\n");
    assert_eq!(
        answer(&p, "192.0.2.60", "", "u@pass.example", "e1").await,
        "prepend X-Comment: SPF skipped for whitelisted relay - client-ip=192.0.2.60; helo=; envelope-from=u@pass.example; receiver=dest.example "
    );
}

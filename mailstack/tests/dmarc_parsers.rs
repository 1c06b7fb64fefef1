//! The DMARC parsers of untrusted input (From fields, Authentication-Results, Received-SPF,
//! `_dmarc` records) never panic, and what they accept keeps OpenDMARC's protections: an
//! author domain is always one valid host name, and upstream results only come from trusted
//! authserv-ids with valid domains.

use mailstack::dmarc::DmarcRecord;
use mailstack::dmarc::PublicSuffixList;
use mailstack::dmarc::{
    UpstreamContext, author_domain, is_valid_domain, parse_auth_results, read_upstream,
};
use proptest::prelude::*;

/// Strings over the characters these grammars care about, plus anything.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9@.<>()\":;, =\\\\/\t\n-]{0,80}", any::<String>(),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn author_domain_is_total_and_valid(v in header_text(), w in header_text()) {
        if let Ok(d) = author_domain(&[&v]) {
            prop_assert!(is_valid_domain(&d), "{d:?} from {v:?}");
            prop_assert_eq!(d.to_ascii_lowercase(), d.clone());
        }
        let _ = author_domain(&[&v, &w]);
    }

    #[test]
    fn auth_results_and_received_spf_are_total(v in header_text(), env in header_text()) {
        let _ = parse_auth_results(&v);
        let fields = vec![
            ("Authentication-Results".to_owned(), v.clone()),
            ("Received-SPF".to_owned(), v.clone()),
        ];
        let ctx = UpstreamContext { envelope_from: &env, spf_ignore_results: false };
        let up = read_upstream(&fields, ctx, |id| id == "mx.example");
        for d in &up.dkim {
            prop_assert!(is_valid_domain(&d.domain));
        }
        if let Some(s) = &up.spf {
            prop_assert!(is_valid_domain(&s.domain));
        }
    }

    #[test]
    fn untrusted_ids_give_no_results(id in "[a-z.]{1,20}", rest in header_text()) {
        prop_assume!(id != "mx.example");
        let v = format!("{id}; dkim=pass header.d=a.example; spf=pass smtp.mailfrom=a.example{rest}");
        let fields = vec![("Authentication-Results".to_owned(), v)];
        let ctx = UpstreamContext { envelope_from: "x@a.example", spf_ignore_results: false };
        let up = read_upstream(&fields, ctx, |i| i == "mx.example");
        prop_assert!(up.dkim.is_empty() && up.spf.is_none());
    }

    #[test]
    fn records_and_suffixes_are_total(txt in any::<Vec<u8>>(), rec in "v=DMARC1;[a-z=; ,:@.0-9]{0,60}", dom in "[a-z0-9.*!-]{0,40}") {
        let _ = DmarcRecord::parse(&txt);
        if let Ok(r) = DmarcRecord::parse(rec.as_bytes()) {
            prop_assert!(r.pct <= 100);
        }
        let psl = PublicSuffixList::parse("com\n*.ck\n!www.ck\nco.uk\n");
        let org = psl.organizational_domain(&dom);
        prop_assert!(dom.to_ascii_lowercase().trim_end_matches('.').ends_with(&org));
    }
}

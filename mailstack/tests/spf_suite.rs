//! Runs the openspf RFC 7208 test suite (`tests/data/rfc7208-tests.yml`, BSD licence in
//! `tests/data/rfc7208-tests.LICENSE`) through [`mailstack::spf::SpfEvaluator`], offline.
//!
//! Each scenario's zonedata becomes a [`MemoryResolver`], following pyspf's `testspf.py`
//! driver: `SPF` records are copied to TXT only when the name has no `TXT` entry, `TXT: NONE`
//! means no TXT record, a bare `TIMEOUT` times out every query not answered by an earlier
//! record, and names not in the zone do not exist. Each test checks the MAIL FROM identity
//! (`postmaster@helo` when `mailfrom` is empty) with `%{r}` = `unknown`; an `explanation` of
//! `DEFAULT` means "no exp= text".
//!
//! Run: `cargo test -p mailstack --test spf_suite -- --nocapture` to see every failure.

use std::net::IpAddr;
use std::sync::Arc;

use mailstack::dns::{MemoryRecord, MemoryResolver, Mx};
use mailstack::spf::{LookupLimits, SpfEvaluator};
use yaml_rust2::{Yaml, YamlLoader};

/// The suite has 203 cases; pyspf, the reference implementation, passes 200 through a DNS
/// harness. We require at least as many.
const REQUIRED_PASSES: usize = 200;

fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(parts) => parts.iter().map(text).collect(),
        _ => String::new(),
    }
}

fn zone(zonedata: &Yaml) -> MemoryResolver {
    let mut z = MemoryResolver::new();
    let Some(map) = zonedata.as_hash() else {
        return z;
    };
    for (name, records) in map {
        let name = text(name);
        z.add_name(&name);
        let records = records.as_vec().cloned().unwrap_or_default();
        let has_txt = records.iter().any(|r| {
            r.as_hash()
                .is_some_and(|h| h.contains_key(&Yaml::String("TXT".into())))
        });
        for record in &records {
            if record.as_str() == Some("TIMEOUT") {
                z.add(&name, MemoryRecord::Timeout);
                continue;
            }
            let Some(h) = record.as_hash() else { continue };
            for (ty, value) in h {
                add_record(&mut z, &name, ty.as_str().unwrap_or(""), value, has_txt);
            }
        }
    }
    z
}

fn add_record(z: &mut MemoryResolver, name: &str, ty: &str, value: &Yaml, has_txt: bool) {
    if value.as_str() == Some("TIMEOUT") {
        let t = match ty {
            "A" => mailstack::dns::RecordType::A,
            "AAAA" => mailstack::dns::RecordType::Aaaa,
            "MX" => mailstack::dns::RecordType::Mx,
            "PTR" => mailstack::dns::RecordType::Ptr,
            _ => mailstack::dns::RecordType::Txt,
        };
        z.add(name, MemoryRecord::TimeoutFor(t));
        return;
    }
    let record = match ty {
        "TXT" if value.as_str() == Some("NONE") => return,
        "TXT" => MemoryRecord::Txt(text(value).into_bytes()),
        "SPF" if !has_txt => MemoryRecord::Txt(text(value).into_bytes()),
        "A" => MemoryRecord::A(text(value).parse().expect("A rdata")),
        "AAAA" => MemoryRecord::Aaaa(text(value).parse().expect("AAAA rdata")),
        "MX" => {
            let v = value.as_vec().expect("MX rdata is [pref, name]");
            let preference = v[0].as_i64().unwrap_or(0) as u16;
            MemoryRecord::Mx(Mx {
                preference,
                exchange: text(&v[1]).trim_end_matches('.').to_owned(),
            })
        }
        "PTR" => MemoryRecord::Ptr(text(value)),
        "CNAME" => MemoryRecord::Cname(text(value)),
        _ => return,
    };
    z.add(name, record);
}

struct Case {
    name: String,
    host: IpAddr,
    helo: String,
    mailfrom: String,
    results: Vec<String>,
    explanation: Option<String>,
}

fn cases(scenario: &Yaml) -> Vec<Case> {
    let mut out = Vec::new();
    let Some(tests) = scenario["tests"].as_hash() else {
        return out;
    };
    for (name, t) in tests {
        let results = match &t["result"] {
            Yaml::Array(list) => list.iter().map(text).collect(),
            other => vec![text(other)],
        };
        out.push(Case {
            name: text(name),
            host: text(&t["host"]).parse().expect("host is an IP address"),
            helo: text(&t["helo"]),
            mailfrom: text(&t["mailfrom"]),
            results,
            explanation: t["explanation"].as_str().map(str::to_owned),
        });
    }
    out
}

#[tokio::test]
async fn rfc7208_suite() {
    let data = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rfc7208-tests.yml"
    ))
    .unwrap();
    let docs = YamlLoader::load_from_str(&data).unwrap();
    let (mut total, mut passed, mut failures) = (0, 0, Vec::new());
    for scenario in &docs {
        let resolver = Arc::new(zone(&scenario["zonedata"]));
        let spf = SpfEvaluator::new(resolver, LookupLimits::default());
        for case in cases(scenario) {
            total += 1;
            let out = spf
                .check_mail_from(case.host, &case.helo, &case.mailfrom)
                .await;
            let result_ok = case.results.iter().any(|r| r == out.result.as_str());
            let exp_ok = match case.explanation.as_deref() {
                None => true,
                Some("DEFAULT") => out.explanation.is_none(),
                Some(e) => out.explanation.as_deref() == Some(e),
            };
            if result_ok && exp_ok {
                passed += 1;
            } else {
                failures.push(format!(
                    "{}: expected {:?} exp {:?}, got {} exp {:?} (mechanism {:?}, problem {:?})",
                    case.name,
                    case.results,
                    case.explanation,
                    out.result,
                    out.explanation,
                    out.mechanism,
                    out.problem
                ));
            }
        }
    }
    println!("RFC 7208 suite: {passed}/{total} passed");
    for f in &failures {
        println!("  FAILED {f}");
    }
    assert_eq!(total, 203, "the suite has 203 cases");
    assert!(
        passed >= REQUIRED_PASSES,
        "{passed}/{total} passed, need {REQUIRED_PASSES}:\n{}",
        failures.join("\n")
    );
}

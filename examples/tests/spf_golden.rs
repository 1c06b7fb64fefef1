//! Golden transcripts: `spf-policyd` answers like python-policyd-spf (Debian
//! `postfix-policyd-spf-python`, `/usr/bin/policyd-spf`) on the same requests and DNS zones.
//!
//! Both daemons run under spawn(8)-style stdin/stdout inside a network namespace whose
//! `/etc/resolv.conf` points at a test DNS server (see `spf_support`), for several
//! configurations. Every reply must be equal, except for the documented differences:
//!
//! - the text of a `temperror` (resolver messages differ; both say `SPF Temporary Error:`);
//! - CVE-2019-20790: HELO pass + MAIL FROM without SPF, where python prepends the HELO
//!   result and we the MAIL FROM one.
//!
//! Needs root, `ip` and python-policyd-spf (`.ci/packages`). It is never skipped: a missing prerequisite (root, iproute2, python-policyd-spf) is a failure.
//!
//! Run: `cargo test -p mailstack-examples --test spf_golden -- --nocapture`.

mod spf_support;

use std::io::Write as _;
use std::process::Stdio;

use spf_support::{CASES, CONFIGS, CVE_CASE, Netns, TEMP_CASES, golden_zone};

const PYTHON_DAEMON: &str = "/usr/bin/policyd-spf";

fn request(n: usize, client: &str, helo: &str, sender: &str, recipient: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address={client}\nclient_name=unknown\nhelo_name={helo}\nsender={sender}\nrecipient={recipient}\ninstance=i{n}\nqueue_id=\n\n"
    )
}

fn run(ns: &Netns, program: &str, args: &[&str], input: &str) -> Vec<String> {
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split("\n\n")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces the resolver-specific text of a temperror with `<dns>`.
fn normalise(reply: &str) -> String {
    const MARK: &str = "SPF Temporary Error:";
    let Some(start) = reply.find(MARK) else {
        return reply.to_owned();
    };
    let rest = &reply[start + MARK.len()..];
    let end = [". Please see", ") identity", ")", " ("]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    format!("{}{MARK} <dns>{}", &reply[..start], &rest[end..])
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces)".into());
    }
    if !std::path::Path::new(PYTHON_DAEMON).exists() {
        return Err(format!(
            "{PYTHON_DAEMON} missing (apt-get install postfix-policyd-spf-python)"
        ));
    }
    Ok(())
}

#[test]
fn replies_match_python_policyd_spf() {
    if let Err(why) = prerequisites() {
        panic!("spf_golden needs its peers (run .ci/run as root): {why}");
    }
    let ns =
        Netns::create(&format!("spfgold{}", std::process::id())).expect("create network namespace");
    ns.start_dns(golden_zone())
        .expect("DNS server in the namespace");
    let ours = env!("CARGO_BIN_EXE_spf-policyd");
    let dir = tempfile::tempdir().unwrap();
    let (mut compared, mut mismatches) = (0, Vec::new());
    for (name, conf) in CONFIGS {
        let path = dir.path().join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        let path = path.to_str().unwrap();
        let mut input = String::new();
        let mut labels = Vec::new();
        for (n, (client, helo, sender)) in CASES.iter().chain(TEMP_CASES).enumerate() {
            input.push_str(&request(n, client, helo, sender, "rcpt@dest.example"));
            labels.push(format!("{client} {helo} <{sender}>"));
        }
        // A second recipient of the first message: the header goes in once per message.
        input.push_str(&request(
            0,
            CASES[0].0,
            CASES[0].1,
            CASES[0].2,
            "other@dest.example",
        ));
        labels.push("second recipient of message i0".into());
        // No recipient yet (protocol_state MAIL): receiver=none.
        input.push_str(&request(
            999,
            "192.0.2.9",
            "helo.none.example",
            "u@soft.example",
            "",
        ));
        labels.push("no recipient".into());

        let python = run(&ns, PYTHON_DAEMON, &[path], &input);
        let rust = run(&ns, ours, &["--config", path, "--log", "none"], &input);
        assert_eq!(
            python.len(),
            labels.len(),
            "[{name}] python answered {} of {}",
            python.len(),
            labels.len()
        );
        assert_eq!(
            rust.len(),
            labels.len(),
            "[{name}] spf-policyd answered {} of {}",
            rust.len(),
            labels.len()
        );
        for ((label, p), r) in labels.iter().zip(&python).zip(&rust) {
            compared += 1;
            println!("[{name}] {label}\n  python: {p}\n  ours:   {r}");
            if normalise(p) != normalise(r) {
                mismatches.push(format!("[{name}] {label}\n  python: {p}\n  ours:   {r}"));
            }
        }

        // The documented difference (CVE-2019-20790).
        let (client, helo, sender) = CVE_CASE;
        let input = request(0, client, helo, sender, "rcpt@dest.example");
        let python = run(&ns, PYTHON_DAEMON, &[path], &input);
        let rust = run(&ns, ours, &["--config", path, "--log", "none"], &input);
        if *name == "debian-default" {
            assert!(
                python[0].contains("Received-SPF: Pass (sender SPF authorized) identity=helo;"),
                "{python:?}"
            );
            assert_eq!(
                rust[0],
                "action=prepend Received-SPF: None (mailfrom) identity=mailfrom; client-ip=192.0.2.1; helo=mail.pass.example; envelope-from=u@nosuch.example; receiver=dest.example "
            );
        }
    }
    println!("{compared} replies compared, {} differ", mismatches.len());
    assert!(
        mismatches.is_empty(),
        "replies differ from python-policyd-spf:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn normalises_only_temperror_text() {
    assert_eq!(
        normalise(
            "action=defer_if_permit 4.7.24 Message deferred due to: SPF Temporary Error: DNS timed out. Please see x"
        ),
        "action=defer_if_permit 4.7.24 Message deferred due to: SPF Temporary Error: <dns>. Please see x"
    );
    assert_eq!(normalise("action=dunno"), "action=dunno");
}

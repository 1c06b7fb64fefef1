//! OpenDKIM's `miltertest` (Debian package `miltertest`) runs `tests/miltertest/stamp.lua`
//! against our `stamp-milter`: replies at every stage, the added header and recipient, the
//! replaced body, and the SMTP reply of a rejection. miltertest exits nonzero when a check in
//! the script fails.
//!
//! Run: `cargo test -p mailstack-examples --test milter_miltertest`.

mod support;

use std::path::Path;
use std::process::Command;

use support::milters::Daemon;

const MILTERTEST: &str = "/usr/bin/miltertest";

#[test]
fn miltertest_script_passes_against_stamp_milter() {
    assert!(
        Path::new(MILTERTEST).exists(),
        "{MILTERTEST} is missing: install Debian's miltertest package (.ci/packages lists it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let milter = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_stamp-milter")),
        tmp.path(),
        "stamp",
        &[
            "--add-header",
            "X-Stamp: yes",
            "--add-rcpt",
            "added@dest.example",
            "--replace-body",
            "replaced\\n",
            "--reject-pattern",
            "reject-me",
            "--reject-reply",
            "550 5.7.1 no thanks",
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/miltertest/stamp.lua");
    let out = Command::new(MILTERTEST)
        .arg("-D")
        .arg(format!("socket={}", milter.spec()))
        .arg("-s")
        .arg(&script)
        .output()
        .expect("run miltertest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "miltertest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
}

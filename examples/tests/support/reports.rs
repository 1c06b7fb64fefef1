//! DMARC aggregate reports as a receiver reads them: parsedmarc (PyPI, in /opt/parsedmarc,
//! installed by .ci/run) over the files `mailstack dmarc-report --dry-run` writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// parsedmarc's Python.
pub const PARSEDMARC: &str = "/opt/parsedmarc/bin/python";

/// Rows of a report: (policy domain, source ip, disposition, override reasons) -> count.
pub type Rows = BTreeMap<(String, String, String, Vec<String>), u64>;

/// What parsedmarc reads from each file: (domain, rows as (ip, disposition, reasons) -> count).
pub fn parsedmarc(files: &[PathBuf]) -> Vec<(String, Rows)> {
    assert!(
        Path::new(PARSEDMARC).exists(),
        "parsedmarc is needed for this test: python3 -m venv /opt/parsedmarc && \
         /opt/parsedmarc/bin/pip install parsedmarc (see .ci/run)"
    );
    const SCRIPT: &str = r#"
import ipaddress, json, sys
from parsedmarc import parse_report_file
for p in sys.argv[1:]:
    r = parse_report_file(p, offline=True)
    assert r["report_type"] == "aggregate", r["report_type"]
    rep = r["report"]
    rows = [[str(ipaddress.ip_address(x["source"]["ip_address"])), x["count"],
             x["policy_evaluated"]["disposition"],
             [o["type"] for o in x["policy_evaluated"]["policy_override_reasons"]]]
            for x in rep["records"]]
    print(json.dumps([rep["policy_published"]["domain"], rows]))
"#;
    let out = Command::new(PARSEDMARC)
        .args(["-c", SCRIPT])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parsedmarc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let domain = v[0].as_str().unwrap().to_owned();
            let mut rows = Rows::new();
            for r in v[1].as_array().unwrap() {
                let reasons = r[3]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned())
                    .collect();
                let key = (
                    domain.clone(),
                    r[0].as_str().unwrap().to_owned(),
                    r[2].as_str().unwrap().to_owned(),
                    reasons,
                );
                *rows.entry(key).or_default() += r[1].as_u64().unwrap();
            }
            (domain, rows)
        })
        .collect()
}

/// The `.xml.gz` report files `mailstack dmarc-report --dry-run` wrote in `dir`, sorted.
pub fn gz_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".xml.gz"))
        .collect();
    v.sort();
    v
}

/// Today's UTC day as `--begin`/`--end` (Unix seconds) of `mailstack dmarc-report`: the
/// window the records of mail sent now fall in.
pub fn today_utc() -> (u64, u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let begin = now / 86_400 * 86_400;
    (begin, begin + 86_400)
}

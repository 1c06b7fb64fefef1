//! Replays the checked-in fuzz corpora of `fuzz/corpus/{spf_record,config_file}` through the
//! same entry points the cargo-fuzz targets call, on stable Rust, and checks that a few seeds
//! keep their meaning (so a corpus that silently stopped exercising the parser shows up).
//! The clamd corpus has its own replay test (`clamd_corpus.rs`).

use std::path::{Path, PathBuf};

use mailstack::config::{ConfigFile, Syntax};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

#[test]
fn spf_record_corpus_replays() {
    for path in corpus("spf_record") {
        mailstack::fuzzing::spf_record(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn config_file_corpus_replays_and_keeps_meaning() {
    let files = corpus("config_file");
    for path in &files {
        mailstack::fuzzing::config_file(&std::fs::read(path).unwrap());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_file");
    let f = ConfigFile::read(&dir.join("opendkim"), Syntax::Whitespace).unwrap();
    assert_eq!(f.entries.len(), 4);
    assert_eq!(f.entries[3].key, "On-BadSignature");
    assert_eq!(f.entries[3].line, 6);
    let err = ConfigFile::read(&dir.join("policyd_spf"), Syntax::Equals).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("policyd_spf:3: expected `key = value`, found \"x\"")
    );
    let f = ConfigFile::read(&dir.join("bad_values"), Syntax::Whitespace).unwrap();
    assert!(f.bool(&f.entries[0]).is_err());
    assert!(f.number::<u64>(&f.entries[1]).is_err());
}

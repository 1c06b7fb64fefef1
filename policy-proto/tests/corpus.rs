//! Replays `fuzz/corpus/policy_request/` through the fuzz entry point on stable Rust, and
//! checks the seeds still mean what they were written for.

use bytes::BytesMut;
use policy_proto::{Action, ReplyDecoder, RequestDecoder};

#[test]
fn policy_request_corpus_replays() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/policy_request");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        policy_proto::fuzzing::policy_request(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} files");
    let mut buf = BytesMut::from(&std::fs::read(dir.join("postfix-2.1")).unwrap()[..]);
    let r = RequestDecoder::new().decode(&mut buf).unwrap().unwrap();
    assert_eq!(r.queue_id(), Some("8045F2AB23"));
    let mut buf = BytesMut::from(&std::fs::read(dir.join("reply_prepend")).unwrap()[..]);
    assert_eq!(
        ReplyDecoder::new().decode(&mut buf).unwrap(),
        Some(Action::prepend("X-Test: yes").unwrap())
    );
}

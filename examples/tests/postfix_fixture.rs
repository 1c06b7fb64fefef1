//! The private-Postfix fixture itself: a plain message goes through Postfix to the sink with
//! its envelope intact, and a refused recipient is refused at the SMTP client.
//!
//! Run: `cargo test -p mailstack-examples --test postfix_fixture`.

mod support;

use std::time::Duration;
use support::postfix::Postfix;

#[test]
fn plain_message_reaches_the_sink() {
    let pf = Postfix::builder().start();
    let mut smtp = pf.smtp();
    let reply = smtp.send(
        "alice@src.example",
        &["bob@dest.example", "carol@dest.example"],
        "Subject: fixture\r\nFrom: alice@src.example\r\n\r\nline one\r\n.leading dot\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    let m = &msgs[0];
    assert_eq!(m.mail_from, "alice@src.example");
    assert_eq!(m.rcpts, ["bob@dest.example", "carol@dest.example"]);
    assert_eq!(m.header("Subject"), ["fixture"]);
    assert_eq!(m.body(), "line one\r\n.leading dot\r\n");
    // The instance relays only for dest.example.
    let mut smtp = pf.smtp();
    smtp.expect("MAIL FROM:<alice@src.example>", "250");
    let refused = smtp.cmd("RCPT TO:<x@elsewhere.example>");
    assert!(refused.code >= 500, "{refused}");
}

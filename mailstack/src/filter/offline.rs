//! Driving a filter without an MTA: `mailstack check FILE.eml` and tests.

use super::{
    Action, AuthFacts, Connection, EndOfMessage, Envelope, Filter, Flow, Modification, Start,
    Verdict,
};
use crate::dkim::canon::Header;

/// The body is fed in chunks of this size, as libmilter's `MILTER_CHUNK_SIZE` does.
pub const OFFLINE_CHUNK: usize = 65_535;

/// Where an offline run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum OfflineOutcome {
    /// Every filter skipped at this stage (`connect`, `mail`): the message is accepted
    /// unchecked, as an MTA would after ACCEPT.
    Skipped(&'static str),
    /// A filter stopped the message at this stage with this action.
    Stopped(&'static str, Action),
    /// The message reached end of message.
    Verdict(Verdict),
}

/// Runs `filter` over one message as an MTA would (connect, HELO, MAIL, RCPT, each header,
/// end of headers, the body in [`OFFLINE_CHUNK`]-byte chunks, end of message). `message` is
/// the whole message with CRLF or LF line ends.
pub async fn run_offline<F: Filter>(
    filter: &F,
    conn: &Connection,
    env: &Envelope,
    message: &[u8],
) -> OfflineOutcome {
    match filter.connect(conn) {
        Flow::Stop(a) => return OfflineOutcome::Stopped("connect", a),
        Flow::Skip => return OfflineOutcome::Skipped("connect"),
        Flow::Continue => {}
    }
    match filter.helo(conn).await {
        Flow::Stop(a) => return OfflineOutcome::Stopped("helo", a),
        Flow::Skip => return OfflineOutcome::Skipped("helo"),
        Flow::Continue => {}
    }
    let mut msg = match filter.mail(conn, env).await {
        Start::Message(m) => m,
        Start::Skip => return OfflineOutcome::Skipped("mail"),
        Start::Stop(a) => return OfflineOutcome::Stopped("mail", a),
    };
    for r in &env.rcpts {
        if let Flow::Stop(a) = filter.rcpt(&mut msg, r) {
            return OfflineOutcome::Stopped("rcpt", a);
        }
    }
    let crlf = to_crlf(message);
    let (headers, body_at) = Header::split_message(&crlf);
    for h in &headers {
        filter.header(&mut msg, h).await;
    }
    if let Flow::Stop(a) = filter.end_of_headers(&mut msg, conn, env).await {
        return OfflineOutcome::Stopped("end of headers", a);
    }
    for chunk in crlf
        .get(body_at..)
        .unwrap_or_default()
        .chunks(OFFLINE_CHUNK)
    {
        filter.body(&mut msg, chunk).await;
    }
    let facts = AuthFacts::default();
    let eom = EndOfMessage {
        conn,
        env,
        facts: &facts,
        leadspc: true,
    };
    OfflineOutcome::Verdict(filter.end_of_message(msg, &eom).await)
}

/// Bare LF line ends become CRLF (a `.eml` saved on Unix); a message already in CRLF is not
/// copied.
fn to_crlf(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare_lf = message
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || message.get(i - 1) != Some(&b'\r')));
    if !bare_lf {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    std::borrow::Cow::Owned(out)
}

/// The message as the MTA would deliver it after `modifications` (applied in order, as
/// [`super::apply`] hands them to the MTA: `Insert` at its index, `AuthResults` at the top,
/// `Append` at the end of the header block, `Delete` of the `index`-th field of that name).
/// `message` has CRLF line ends; values' `\n` folds become CRLF.
pub fn apply_to_message(message: &[u8], modifications: &[Modification]) -> Vec<u8> {
    let (headers, body_at) = Header::split_message(message);
    let mut fields: Vec<(String, Vec<u8>)> =
        headers.into_iter().map(|h| (h.name, h.value)).collect();
    let written = |v: &str| format!(" {v}").replace('\n', "\r\n").into_bytes();
    for m in modifications {
        match m {
            Modification::Insert { index, name, value } => {
                let at = (*index as usize).min(fields.len());
                fields.insert(at, (name.clone(), written(value)));
            }
            Modification::AuthResults(value) => {
                fields.insert(0, ("Authentication-Results".into(), written(value)));
            }
            Modification::Append { name, value } => fields.push((name.clone(), written(value))),
            Modification::Delete { name, index } => {
                let at = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.trim().eq_ignore_ascii_case(name))
                    .nth((*index as usize).saturating_sub(1))
                    .map(|(i, _)| i);
                if let Some(at) = at.filter(|_| *index > 0) {
                    fields.remove(at);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(message.len() + 4096);
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message.get(body_at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_becomes_crlf_once() {
        assert_eq!(&*to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert!(matches!(
            to_crlf(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(&*to_crlf(b"\n"), b"\r\n");
    }
}

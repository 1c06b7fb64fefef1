//! Two filters in one pass over the message.

use super::{
    Action, AuthFacts, Connection, EndOfMessage, Envelope, Filter, Flow, Needs, Start, Verdict,
};
use crate::dkim::canon::Header;

/// Runs `first` and `second` on the same events: headers and body chunks reach both in the
/// same pass (concurrently, so one filter's wait on a peer, such as clamd, overlaps the
/// other's work); at end of message `first` decides first and its [`AuthFacts`] reach
/// `second` (SPF and DKIM before DMARC). The verdicts are combined with
/// [`Verdict::combine`]. A filter that skips a message is not called again for it; chains
/// nest (`Chain<A, Chain<B, C>>`).
#[derive(Debug, Clone)]
pub struct Chain<A, B> {
    /// Runs first at end of message.
    pub first: A,
    /// Sees the first one's facts.
    pub second: B,
}

impl<A, B> Chain<A, B> {
    /// `first`, then `second`.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

/// The stronger of two early actions.
fn stronger(a: Action, b: Action) -> Action {
    if b.severity() > a.severity() { b } else { a }
}

fn both(a: Flow, b: Flow) -> Flow {
    match (a, b) {
        (Flow::Stop(x), Flow::Stop(y)) => Flow::Stop(stronger(x, y)),
        (Flow::Stop(x), _) | (_, Flow::Stop(x)) => Flow::Stop(x),
        (Flow::Skip, Flow::Skip) => Flow::Skip,
        _ => Flow::Continue,
    }
}

#[async_trait::async_trait]
impl<A: Filter, B: Filter> Filter for Chain<A, B> {
    type Message = (Option<A::Message>, Option<B::Message>);

    fn needs(&self) -> Needs {
        self.first.needs().union(self.second.needs())
    }

    fn connect(&self, conn: &Connection) -> Flow {
        both(self.first.connect(conn), self.second.connect(conn))
    }

    async fn helo(&self, conn: &Connection) -> Flow {
        both(self.first.helo(conn).await, self.second.helo(conn).await)
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<Self::Message> {
        let a = self.first.mail(conn, env).await;
        let b = self.second.mail(conn, env).await;
        match (a, b) {
            (Start::Stop(x), Start::Stop(y)) => Start::Stop(stronger(x, y)),
            (Start::Stop(x), _) | (_, Start::Stop(x)) => Start::Stop(x),
            (Start::Skip, Start::Skip) => Start::Skip,
            (a, b) => Start::Message((started(a), started(b))),
        }
    }

    fn rcpt(&self, msg: &mut Self::Message, rcpt: &str) -> Flow {
        let a = msg
            .0
            .as_mut()
            .map_or(Flow::Skip, |m| self.first.rcpt(m, rcpt));
        let b = msg
            .1
            .as_mut()
            .map_or(Flow::Skip, |m| self.second.rcpt(m, rcpt));
        match both(a, b) {
            Flow::Skip => Flow::Continue,
            f => f,
        }
    }

    async fn header(&self, msg: &mut Self::Message, header: &Header) {
        let (a, b) = (&mut msg.0, &mut msg.1);
        tokio::join!(
            async {
                if let Some(m) = a {
                    self.first.header(m, header).await;
                }
            },
            async {
                if let Some(m) = b {
                    self.second.header(m, header).await;
                }
            }
        );
    }

    async fn end_of_headers(
        &self,
        msg: &mut Self::Message,
        conn: &Connection,
        env: &Envelope,
    ) -> Flow {
        let (a, b) = (&mut msg.0, &mut msg.1);
        let (fa, fb) = tokio::join!(
            async {
                match a {
                    Some(m) => self.first.end_of_headers(m, conn, env).await,
                    None => Flow::Skip,
                }
            },
            async {
                match b {
                    Some(m) => self.second.end_of_headers(m, conn, env).await,
                    None => Flow::Skip,
                }
            }
        );
        match both(fa, fb) {
            Flow::Skip => Flow::Continue,
            f => f,
        }
    }

    async fn body(&self, msg: &mut Self::Message, chunk: &[u8]) {
        let (a, b) = (&mut msg.0, &mut msg.1);
        tokio::join!(
            async {
                if let Some(m) = a {
                    self.first.body(m, chunk).await;
                }
            },
            async {
                if let Some(m) = b {
                    self.second.body(m, chunk).await;
                }
            }
        );
    }

    async fn end_of_message(&self, msg: Self::Message, eom: &EndOfMessage<'_>) -> Verdict {
        let first = match msg.0 {
            Some(m) => self.first.end_of_message(m, eom).await,
            None => Verdict::accept(),
        };
        let mut facts: AuthFacts = eom.facts.clone();
        facts.merge(first.facts.clone());
        let second = match msg.1 {
            Some(m) => {
                let eom = EndOfMessage {
                    facts: &facts,
                    ..*eom
                };
                self.second.end_of_message(m, &eom).await
            }
            None => Verdict::accept(),
        };
        first.combine(second)
    }
}

fn started<M>(s: Start<M>) -> Option<M> {
    match s {
        Start::Message(m) => Some(m),
        _ => None,
    }
}

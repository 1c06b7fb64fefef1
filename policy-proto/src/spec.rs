//! [`SocketSpec`]: where a policy server listens or a client connects. The grammar is the one
//! `milter-proto` reads too (crate `mailstack-transport`): Postfix's `unix:PATH`,
//! `inet:HOST:PORT`, libmilter's `local:PATH`, `inet:PORT@HOST`, `inet6:PORT@HOST`, a bare
//! path, and `inet:PORT` for every IPv4 address (`docs/spec/policy-delegation.md` §1.1).

pub use mailstack_transport::{SocketSpec, SpecError};

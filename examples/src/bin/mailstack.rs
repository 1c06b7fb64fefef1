//! `mailstack`: the command-line tool next to `mailstackd`.
//!
//! `mailstack check FILE.eml --client-ip IP --helo NAME --from ADDR [--rcpt ADDR]...` runs
//! mailstackd's pipeline on one message without an MTA (same configuration, same DNS) and
//! prints each filter's result, the header changes it would make and the final decision;
//! `--json` for scripts. The exit status says the decision (see `--help`), as `rspamc` and
//! `opendkim-testmsg` users expect.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailstack::filter::offline::{Outcome, run};
use mailstack::filter::{Action, ClientAddr, Connection, Envelope, Modification, Verdict};
use mailstack::stack::StackConfig;
use mailstack_examples::daemon;

/// mailstack tools.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the mailstackd pipeline on one message, offline.
    #[command(after_help = CHECK_HELP)]
    Check(Check),
}

const CHECK_HELP: &str = "\
Exit status: 0 delivered (accept), 1 quarantined, 3 rejected, 4 tempfailed, 5 discarded,
2 usage or configuration error.";

#[derive(Debug, clap::Args)]
struct Check {
    /// The message (CRLF or LF line ends).
    message: PathBuf,
    /// The SMTP client's address (omit for a local submission).
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
    /// The client's host name as the MTA resolved it.
    #[arg(long, value_name = "NAME", default_value = "unknown")]
    client_name: String,
    /// The HELO/EHLO name.
    #[arg(long, value_name = "NAME", default_value = "")]
    helo: String,
    /// MAIL FROM (empty for the null sender).
    #[arg(long, value_name = "ADDR", default_value = "")]
    from: String,
    /// RCPT TO (repeat for several).
    #[arg(long, value_name = "ADDR")]
    rcpt: Vec<String>,
    /// The SMTP AUTH login, as if the client had authenticated (signing instead of
    /// verifying where DKIM has a key).
    #[arg(long, value_name = "LOGIN")]
    auth: Option<String>,
    /// mailstackd.toml (default: the embedded default).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// DNS server to ask (IP:PORT) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Vec<SocketAddr>,
    /// The MTA's name (macro j), the default authserv-id.
    #[arg(long, value_name = "NAME")]
    mta_name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    mailstack_examples::logging::stderr("warn");
    let Cmd::Check(c) = Args::parse().command;
    let message = read_message(&c.message).unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let cfg = match &c.config {
        Some(p) => StackConfig::read(p),
        None => StackConfig::embedded(),
    }
    .unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let nameservers = if c.nameserver.is_empty() {
        cfg.daemon.nameservers.clone()
    } else {
        c.nameserver.clone()
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let outcome = rt.block_on(async {
        let resolver = daemon::resolver(&nameservers, cfg.daemon.dns_timeout)?;
        let stack = cfg.build(resolver, None, &daemon::hostname())?;
        let addr = c.client_ip.map_or(ClientAddr::Local, ClientAddr::Ip);
        let mut conn = Connection::new(c.client_name.clone(), addr);
        conn.helo = c.helo.clone();
        conn.mta_name = c.mta_name.clone();
        let mut env = Envelope::new(&c.from);
        env.auth_login = c.auth.clone();
        for r in &c.rcpt {
            env.add_rcpt(r);
        }
        Ok::<_, daemon::DaemonError>(run(&stack, &conn, &env, &message).await)
    });
    let outcome = outcome.unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let report = Report::of(&outcome);
    if c.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    ExitCode::from(report.status)
}

/// Largest message `check` reads (into memory, as a whole): far beyond Postfix's
/// `message_size_limit` (10 MB by default), so a real message always fits, while a wrong path
/// (a disk image, a log) is refused instead of filling memory.
const MAX_CHECK_MESSAGE: u64 = 1 << 30;

fn read_message(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if len > MAX_CHECK_MESSAGE {
        return Err(format!(
            "{shown}: {len} bytes, larger than the {MAX_CHECK_MESSAGE} a message may have here"
        ));
    }
    std::fs::read(path).map_err(|e| format!("{shown}: {e}"))
}

/// What `check` prints.
struct Report {
    stage: &'static str,
    decision: &'static str,
    reply: Option<String>,
    results: Vec<(String, String)>,
    headers: Vec<String>,
    status: u8,
}

fn decision(a: &Action) -> (&'static str, Option<String>, u8) {
    match a {
        Action::Accept => ("accept", None, 0),
        Action::Quarantine { reason, .. } => ("quarantine", Some(reason.clone()), 1),
        Action::Reject(r) => ("reject", r.clone(), 3),
        Action::Tempfail(r) => ("tempfail", r.clone(), 4),
        Action::Discard => ("discard", None, 5),
        _ => ("unknown", None, 2),
    }
}

fn header_line(m: &Modification) -> String {
    match m {
        Modification::Insert { name, value, .. } | Modification::Append { name, value } => {
            format!("+ {name}: {value}")
        }
        Modification::AuthResults(v) => format!("+ Authentication-Results: {v}"),
        Modification::Delete { name, index } => format!("- {name} #{index}"),
        other => format!("{other:?}"),
    }
}

impl Report {
    fn of(o: &Outcome) -> Self {
        let (stage, v) = match o {
            Outcome::Verdict(v) => ("end of message", v.clone()),
            Outcome::Stopped(stage, a) => (*stage, Verdict::action(a.clone())),
            Outcome::Skipped(stage) => (*stage, Verdict::accept()),
            _ => ("unknown", Verdict::accept()),
        };
        let (decision, reply, status) = decision(&v.action);
        Self {
            stage,
            decision,
            reply,
            results: v
                .auth_results
                .iter()
                .map(|r| (r.method.clone(), r.result.clone()))
                .collect(),
            headers: v.modifications.iter().map(header_line).collect(),
            status,
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (m, r) in &self.results {
            out.push_str(&format!("{m}: {r}\n"));
        }
        for h in &self.headers {
            out.push_str(&format!("{h}\n"));
        }
        out.push_str(&format!("decision: {} (at {})", self.decision, self.stage));
        if let Some(r) = &self.reply {
            out.push_str(&format!(": {r}"));
        }
        out.push('\n');
        out
    }

    fn json(&self) -> String {
        let results: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|(m, r)| serde_json::json!({ "method": m, "result": r }))
            .collect();
        serde_json::json!({
            "decision": self.decision,
            "stage": self.stage,
            "reply": self.reply,
            "results": results,
            "headers": self.headers,
        })
        .to_string()
    }
}

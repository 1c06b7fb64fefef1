//! [`Action`]: what a policy server answers, as a value that can only hold what Postfix reads
//! the way we mean it (`access(5)`, and `smtpd_check.c`'s reading of policy replies).

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::ActionError;

/// One reply action. Build the variants with text through the constructors ([`Action::reject`],
/// [`Action::smtp`], [`Action::prepend`]...), which refuse values Postfix would misread:
/// a line break (it would end the reply), a bare numeric code (Postfix reads `550` alone as
/// OK), an unknown word (Postfix evaluates it as a restriction name, then fails with
/// `451 4.3.5`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `OK`: accept this stage.
    Ok,
    /// `DUNNO`: no opinion, go on with the next restriction.
    Dunno,
    /// `REJECT [text]`.
    Reject(Option<Text>),
    /// `DEFER [text]` (Postfix 2.6).
    Defer(Option<Text>),
    /// `DEFER_IF_REJECT [text]`.
    DeferIfReject(Option<Text>),
    /// `DEFER_IF_PERMIT [text]`.
    DeferIfPermit(Option<Text>),
    /// `4NN [x.y.z] text` or `5NN [x.y.z] text`.
    Smtp {
        /// The SMTP code, 400..=599.
        code: u16,
        /// The enhanced status code, if any.
        enhanced: Option<String>,
        /// The text (never empty).
        text: Text,
    },
    /// `PREPEND name: value`.
    Prepend(Text),
    /// `WARN [text]`: log only.
    Warn(Option<Text>),
    /// `INFO [text]` (3.0): log only.
    Info(Option<Text>),
    /// `HOLD [text]`: put the message on hold.
    Hold(Option<Text>),
    /// `DISCARD [text]`: accept and throw away.
    Discard(Option<Text>),
    /// `FILTER transport:destination`.
    Filter(Text),
    /// `REDIRECT user@domain`.
    Redirect(Text),
    /// `BCC user@domain` (3.0).
    Bcc(Text),
}

/// Text checked to hold no CR, LF or NUL (and, where it is a word, no space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// Checks `s` for CR, LF and NUL; `what` names it in the error.
    pub fn new(what: &'static str, s: impl Into<String>) -> Result<Self, ActionError> {
        let s = s.into();
        if s.contains(['\r', '\n', '\0']) {
            return Err(ActionError::LineBreak(what));
        }
        Ok(Self(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn opt(what: &'static str, s: Option<&str>) -> Result<Option<Text>, ActionError> {
    s.filter(|s| !s.is_empty())
        .map(|s| Text::new(what, s))
        .transpose()
}

fn word(what: &'static str, s: &str) -> Result<Text, ActionError> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(ActionError::BadArgument(what));
    }
    Text::new(what, s)
}

impl Action {
    /// `REJECT` with optional text.
    pub fn reject(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Reject(opt("REJECT text", text)?))
    }

    /// `DEFER` with optional text.
    pub fn defer(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Defer(opt("DEFER text", text)?))
    }

    /// `DEFER_IF_PERMIT` with optional text.
    pub fn defer_if_permit(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::DeferIfPermit(opt("DEFER_IF_PERMIT text", text)?))
    }

    /// `DEFER_IF_REJECT` with optional text.
    pub fn defer_if_reject(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::DeferIfReject(opt("DEFER_IF_REJECT text", text)?))
    }

    /// `WARN` with optional text.
    pub fn warn(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Warn(opt("WARN text", text)?))
    }

    /// `INFO` with optional text.
    pub fn info(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Info(opt("INFO text", text)?))
    }

    /// `HOLD` with optional text.
    pub fn hold(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Hold(opt("HOLD text", text)?))
    }

    /// `DISCARD` with optional text.
    pub fn discard(text: Option<&str>) -> Result<Self, ActionError> {
        Ok(Self::Discard(opt("DISCARD text", text)?))
    }

    /// `4NN`/`5NN` with an optional enhanced code (`x.y.z`, same class) and required text.
    pub fn smtp(code: u16, enhanced: Option<&str>, text: &str) -> Result<Self, ActionError> {
        if !(400..=599).contains(&code) || text.trim().is_empty() {
            return Err(ActionError::BadCode);
        }
        if let Some(e) = enhanced {
            let parts: Vec<&str> = e.split('.').collect();
            let digits =
                |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
            let class_ok = parts.first().and_then(|c| c.parse::<u16>().ok()) == Some(code / 100);
            if parts.len() != 3 || !parts.iter().all(|p| digits(p)) || !class_ok {
                return Err(ActionError::BadEnhancedCode);
            }
        }
        Ok(Self::Smtp {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: Text::new("SMTP reply text", text)?,
        })
    }

    /// `PREPEND name: value` (one header line; fold nothing).
    pub fn prepend(header: &str) -> Result<Self, ActionError> {
        let text = Text::new("PREPEND header", header)?;
        let name = header.split_once(':').map(|(n, _)| n).unwrap_or("");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(ActionError::BadHeader);
        }
        Ok(Self::Prepend(text))
    }

    /// `FILTER transport:destination`.
    pub fn filter(dest: &str) -> Result<Self, ActionError> {
        if !dest.contains(':') {
            return Err(ActionError::BadArgument("FILTER transport:destination"));
        }
        Ok(Self::Filter(word("FILTER transport:destination", dest)?))
    }

    /// `REDIRECT user@domain`.
    pub fn redirect(addr: &str) -> Result<Self, ActionError> {
        Ok(Self::Redirect(word("REDIRECT address", addr)?))
    }

    /// `BCC user@domain`.
    pub fn bcc(addr: &str) -> Result<Self, ActionError> {
        Ok(Self::Bcc(word("BCC address", addr)?))
    }

    /// Appends `action=...\n\n` to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let s = format!("action={self}\n\n");
        out.put_slice(s.as_bytes());
    }

    /// Parses the value of an `action=` attribute (the client side).
    pub fn parse(value: &str) -> Result<Self, ActionError> {
        let (w, rest) = match value.split_once(' ') {
            Some((w, r)) => (w, Some(r)),
            None => (value, None),
        };
        let upper = w.to_ascii_uppercase();
        match upper.as_str() {
            "OK" if rest.is_none() => Ok(Self::Ok),
            "DUNNO" if rest.is_none() => Ok(Self::Dunno),
            "REJECT" => Self::reject(rest),
            "DEFER" => Self::defer(rest),
            "DEFER_IF_REJECT" => Self::defer_if_reject(rest),
            "DEFER_IF_PERMIT" => Self::defer_if_permit(rest),
            "WARN" => Self::warn(rest),
            "INFO" => Self::info(rest),
            "HOLD" => Self::hold(rest),
            "DISCARD" => Self::discard(rest),
            "PREPEND" => Self::prepend(rest.unwrap_or("")),
            "FILTER" => Self::filter(rest.unwrap_or("")),
            "REDIRECT" => Self::redirect(rest.unwrap_or("")),
            "BCC" => Self::bcc(rest.unwrap_or("")),
            _ => {
                let code = w.parse::<u16>().map_err(|_| ActionError::UnknownAction)?;
                if w.len() != 3 {
                    return Err(ActionError::BadCode);
                }
                let rest = rest.ok_or(ActionError::BadCode)?;
                let (enh, text) = match rest.split_once(' ') {
                    Some((e, t))
                        if e.contains('.')
                            && e.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
                    {
                        (Some(e), t)
                    }
                    _ => (None, rest),
                };
                Self::smtp(code, enh, text)
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, w: &str, t: &Option<Text>| match t {
            Some(t) => write!(f, "{w} {t}"),
            None => f.write_str(w),
        };
        match self {
            Self::Ok => f.write_str("OK"),
            Self::Dunno => f.write_str("DUNNO"),
            Self::Reject(t) => with(f, "REJECT", t),
            Self::Defer(t) => with(f, "DEFER", t),
            Self::DeferIfReject(t) => with(f, "DEFER_IF_REJECT", t),
            Self::DeferIfPermit(t) => with(f, "DEFER_IF_PERMIT", t),
            Self::Smtp {
                code,
                enhanced: Some(e),
                text,
            } => write!(f, "{code} {e} {text}"),
            Self::Smtp {
                code,
                enhanced: None,
                text,
            } => write!(f, "{code} {text}"),
            Self::Prepend(h) => write!(f, "PREPEND {h}"),
            Self::Warn(t) => with(f, "WARN", t),
            Self::Info(t) => with(f, "INFO", t),
            Self::Hold(t) => with(f, "HOLD", t),
            Self::Discard(t) => with(f, "DISCARD", t),
            Self::Filter(d) => write!(f, "FILTER {d}"),
            Self::Redirect(a) => write!(f, "REDIRECT {a}"),
            Self::Bcc(a) => write!(f, "BCC {a}"),
        }
    }
}

/// Decodes a whole reply (`name=value` lines up to an empty line) from `buf`, the way
/// Postfix does: attributes other than `action` are skipped. `Ok(None)` = need more.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Action>, ActionError> {
    let Some(end) = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| p + 2)
        .or_else(|| buf.starts_with(b"\n").then_some(1))
    else {
        return Ok(None);
    };
    let frame = buf.split_to(end);
    let text = String::from_utf8_lossy(&frame);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("action="))
        .ok_or(ActionError::MissingAction)?;
    Action::parse(value).map(Some)
}

//! [`Action`]: what a policy server answers, as a value that can only hold what Postfix reads
//! the way we mean it (`docs/spec/policy-delegation.md` §1.3: `access(5)`, and
//! `smtpd_check.c`'s `check_table_result`, which reads policy replies).
//!
//! Every argument type ([`Text`], [`SmtpReply`], [`Header`], [`FilterTarget`], [`Address`])
//! has private fields and one checking constructor, so an `Action` that exists can be sent.

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::ActionError;

/// One reply action (`action=...`), the access(5) actions Postfix accepts from a policy
/// server. The protocol fixes this list, but Postfix has grown it (DEFER in 2.6, BCC and INFO
/// in 3.0), hence `#[non_exhaustive]`.
///
/// Not representable, on purpose: a bare number (`action=550` is read as all-numeric, i.e.
/// **OK**), restriction names (Postfix evaluates them; unknown ones give
/// `451 4.3.5 Server configuration error`), `RELAY` (an undocumented synonym of OK) and
/// `HANGUP` (a Postfix test feature).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `OK` (2.1): permit; ends this restriction list.
    Ok,
    /// `DUNNO`: no opinion; Postfix goes on with the next restriction.
    Dunno,
    /// `REJECT [text]`: `$access_map_reject_code` (554), DSN 5.7.1 unless the text starts with
    /// one.
    Reject(Option<Text>),
    /// `DEFER [text]` (2.6): `$access_map_defer_code` (450), DSN 4.7.1.
    Defer(Option<Text>),
    /// `DEFER_IF_REJECT [text]` (2.1): tempfail if the final verdict would be reject.
    DeferIfReject(Option<Text>),
    /// `DEFER_IF_PERMIT [text]` (2.1): tempfail if the final verdict would be permit.
    DeferIfPermit(Option<Text>),
    /// `4NN [x.y.z] text` or `5NN [x.y.z] text`; `421`/`521` also disconnect the client.
    Smtp(SmtpReply),
    /// `PREPEND name: value` (2.1): add a header (ignored with a warning at END-OF-MESSAGE).
    Prepend(Header),
    /// `WARN [text]` (2.1): log a warning, go on.
    Warn(Option<Text>),
    /// `INFO [text]` (3.0): log, go on.
    Info(Option<Text>),
    /// `HOLD [text]`: put the message on the hold queue.
    Hold(Option<Text>),
    /// `DISCARD [text]`: accept and throw away.
    Discard(Option<Text>),
    /// `FILTER transport:destination`: route through a content filter.
    Filter(FilterTarget),
    /// `REDIRECT user@domain` (2.1): deliver to this address instead.
    Redirect(Address),
    /// `BCC user@domain` (3.0): add a blind-copy recipient.
    Bcc(Address),
}

/// Reply text: not empty, no control characters (a line break would end the reply), no
/// leading white space (Postfix skips it, so it would not survive a round trip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// Checks `s`; `what` names it in the error.
    pub fn new(what: &'static str, s: impl Into<String>) -> Result<Self, ActionError> {
        let s = s.into();
        if s.is_empty() {
            return Err(ActionError::Empty(what));
        }
        if s.contains(char::is_control) {
            return Err(ActionError::ControlChar(what));
        }
        if s.starts_with(char::is_whitespace) {
            return Err(ActionError::LeadingSpace(what));
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

/// An explicit SMTP reply: a 4NN or 5NN code, an optional enhanced status code of the same
/// class (RFC 3463 `class.subject.detail`), and text, which Postfix requires (without text,
/// `550` is all-numeric and means OK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    code: u16,
    enhanced: Option<String>,
    text: Text,
}

impl SmtpReply {
    /// Checks and builds the reply. When `enhanced` is `None` and the text starts with an
    /// enhanced status code, that code is taken out of the text, because that is how Postfix
    /// reads it.
    pub fn new(code: u16, enhanced: Option<&str>, text: &str) -> Result<Self, ActionError> {
        if !(400..=599).contains(&code) {
            return Err(ActionError::BadCode);
        }
        let (enhanced, text) = match enhanced {
            Some(e) => (Some(e), text),
            None => match text.split_once([' ', '\t']) {
                Some((first, rest)) if looks_enhanced(first) => (Some(first), rest.trim_start()),
                _ => (None, text),
            },
        };
        if text.trim().is_empty() || looks_enhanced(text.trim()) {
            return Err(ActionError::BadCode);
        }
        if let Some(e) = enhanced {
            check_enhanced(code, e)?;
        }
        Ok(Self {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: Text::new("SMTP reply text", text)?,
        })
    }

    /// The SMTP code, 400..=599.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<&str> {
        self.enhanced.as_deref()
    }

    /// The text (never empty).
    pub fn text(&self) -> &str {
        self.text.as_str()
    }
}

/// True for `d.d.d`-shaped words (digits and dots), which Postfix takes as a DSN.
/// Whether Postfix reads `word` as an enhanced status code (its `dsn_valid()`: class 2, 4
/// or 5, then `.` and 1 to 3 digits, twice). Anything else, `.` or `1.5` included, is text.
fn looks_enhanced(word: &str) -> bool {
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = word.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("2" | "4" | "5"), Some(subject), Some(detail), None)
            if digits(subject) && digits(detail)
    )
}

/// RFC 3463: `class "." subject "." detail`, class one digit equal to the SMTP code's class,
/// subject and detail 1 to 3 digits.
fn check_enhanced(code: u16, e: &str) -> Result<(), ActionError> {
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let mut parts = e.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ActionError::BadEnhancedCode);
    };
    let class_ok = digits(class, 1) && class.parse::<u16>().ok() == Some(code / 100);
    if !class_ok || !digits(subject, 3) || !digits(detail, 3) {
        return Err(ActionError::BadEnhancedCode);
    }
    Ok(())
}

/// A header line for PREPEND: `Name: value` on one line, the name printable ASCII without
/// `:` (Postfix's `is_header` test, stricter: no white space before the colon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header(Text);

impl Header {
    /// Checks `line` (`Name: value`, not folded).
    pub fn new(line: &str) -> Result<Self, ActionError> {
        let text = Text::new("PREPEND header", line)?;
        let name = line.split_once(':').map(|(n, _)| n).unwrap_or("");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ActionError::BadHeader);
        }
        Ok(Self(text))
    }

    /// The whole header line.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The header name (before the first `:`).
    pub fn name(&self) -> &str {
        self.as_str().split_once(':').map(|(n, _)| n).unwrap_or("")
    }
}

/// A FILTER argument, `transport:destination` (one word; Postfix requires the `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTarget(Text);

impl FilterTarget {
    /// Checks `target`.
    pub fn new(target: &str) -> Result<Self, ActionError> {
        const WHAT: &str = "FILTER transport:destination";
        let text = one_word(WHAT, target)?;
        if !target.contains(':') {
            return Err(ActionError::BadArgument(WHAT));
        }
        Ok(Self(text))
    }

    /// The `transport:destination` string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// An address for REDIRECT or BCC: one word with an `@` (Postfix requires it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address(Text);

impl Address {
    /// Checks `addr`.
    pub fn new(addr: &str) -> Result<Self, ActionError> {
        const WHAT: &str = "REDIRECT/BCC address";
        let text = one_word(WHAT, addr)?;
        if !addr.contains('@') {
            return Err(ActionError::BadArgument(WHAT));
        }
        Ok(Self(text))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

fn one_word(what: &'static str, s: &str) -> Result<Text, ActionError> {
    let text = Text::new(what, s)?;
    if s.contains(char::is_whitespace) {
        return Err(ActionError::BadArgument(what));
    }
    Ok(text)
}

/// `None` or empty is no text; anything else must be valid [`Text`].
fn opt(what: &'static str, s: Option<&str>) -> Result<Option<Text>, ActionError> {
    s.filter(|s| !s.is_empty())
        .map(|s| Text::new(what, s))
        .transpose()
}

impl Action {
    /// `REJECT` with optional text (`None` or `""`: Postfix's "Access denied").
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

    /// `4NN`/`5NN [x.y.z] text`; see [`SmtpReply::new`].
    pub fn smtp(code: u16, enhanced: Option<&str>, text: &str) -> Result<Self, ActionError> {
        Ok(Self::Smtp(SmtpReply::new(code, enhanced, text)?))
    }

    /// `PREPEND name: value`; see [`Header::new`].
    pub fn prepend(header: &str) -> Result<Self, ActionError> {
        Ok(Self::Prepend(Header::new(header)?))
    }

    /// `FILTER transport:destination`; see [`FilterTarget::new`].
    pub fn filter(target: &str) -> Result<Self, ActionError> {
        Ok(Self::Filter(FilterTarget::new(target)?))
    }

    /// `REDIRECT user@domain`; see [`Address::new`].
    pub fn redirect(addr: &str) -> Result<Self, ActionError> {
        Ok(Self::Redirect(Address::new(addr)?))
    }

    /// `BCC user@domain`; see [`Address::new`].
    pub fn bcc(addr: &str) -> Result<Self, ActionError> {
        Ok(Self::Bcc(Address::new(addr)?))
    }

    /// Appends the whole reply, `action=...\n\n`, to `out` (write it with one write).
    pub fn encode(&self, out: &mut BytesMut) {
        let s = format!("action={self}\n\n");
        out.put_slice(s.as_bytes());
    }

    /// Parses the value of an `action=` attribute as Postfix reads it: the action word is
    /// case-insensitive and ends at the first space or tab; white space before the argument
    /// is skipped; text after `OK` and `DUNNO` is ignored, as Postfix ignores it.
    pub fn parse(value: &str) -> Result<Self, ActionError> {
        let (word, rest) = match value.split_once([' ', '\t']) {
            Some((w, r)) => (w, Some(r.trim_start_matches([' ', '\t']))),
            None => (value, None),
        };
        let arg = rest.unwrap_or("");
        match word.to_ascii_uppercase().as_str() {
            "OK" => Ok(Self::Ok),
            "DUNNO" => Ok(Self::Dunno),
            "REJECT" => Self::reject(rest),
            "DEFER" => Self::defer(rest),
            "DEFER_IF_REJECT" => Self::defer_if_reject(rest),
            "DEFER_IF_PERMIT" => Self::defer_if_permit(rest),
            "WARN" => Self::warn(rest),
            "INFO" => Self::info(rest),
            "HOLD" => Self::hold(rest),
            "DISCARD" => Self::discard(rest),
            "PREPEND" => Self::prepend(arg),
            "FILTER" => Self::filter(arg),
            "REDIRECT" => Self::redirect(arg),
            "BCC" => Self::bcc(arg),
            _ if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) => {
                let code = word.parse::<u16>().map_err(|_| ActionError::BadCode)?;
                Self::smtp(code, None, arg)
            }
            _ if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) => {
                Err(ActionError::BadCode)
            }
            _ => Err(ActionError::UnknownAction),
        }
    }

    /// The action word (`OK`, `REJECT`, `550`...), for logs.
    pub fn word(&self) -> String {
        match self {
            Self::Smtp(r) => r.code.to_string(),
            other => {
                let s = other.to_string();
                s.split(' ').next().unwrap_or("").to_owned()
            }
        }
    }
}

impl fmt::Display for Action {
    /// The value of the `action=` attribute.
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
            Self::Smtp(r) => match &r.enhanced {
                Some(e) => write!(f, "{} {e} {}", r.code, r.text),
                None => write!(f, "{} {}", r.code, r.text),
            },
            Self::Prepend(h) => write!(f, "PREPEND {}", h.as_str()),
            Self::Warn(t) => with(f, "WARN", t),
            Self::Info(t) => with(f, "INFO", t),
            Self::Hold(t) => with(f, "HOLD", t),
            Self::Discard(t) => with(f, "DISCARD", t),
            Self::Filter(d) => write!(f, "FILTER {}", d.as_str()),
            Self::Redirect(a) => write!(f, "REDIRECT {}", a.as_str()),
            Self::Bcc(a) => write!(f, "BCC {}", a.as_str()),
        }
    }
}

impl std::str::FromStr for Action {
    type Err = ActionError;

    /// Same as [`Action::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a server writes for one request: the value of `action=`.
///
/// Usually an [`Action`] in this crate's spelling (`From<Action>`). Two more forms exist for
/// servers that must match another implementation byte for byte or name a restriction class,
/// and both are still checked so that Postfix cannot misread them:
/// - [`Reply::spelled`]: an action written your way (`dunno`, `prepend X: y`,
///   `defer_if_permit 4.7.24 text`), accepted only if it reads as an [`Action`] and holds no
///   control character (python-policyd-spf writes lower-case words; Postfix matches action
///   words case-insensitively, `docs/spec/policy-delegation.md` §1.3);
/// - [`Reply::restriction_class`]: the name of a restriction (a class in
///   `smtpd_restriction_classes`, or a built-in such as `permit_mynetworks`), which Postfix
///   evaluates in place of an action. A name Postfix does not know gives `451 4.3.5 Server
///   configuration error`, so use it only for names the operator configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    value: String,
    action: Option<Action>,
}

impl From<Action> for Reply {
    fn from(action: Action) -> Self {
        Self {
            value: action.to_string(),
            action: Some(action),
        }
    }
}

impl Reply {
    /// `value` as written, if it reads as an [`Action`] ([`Action::parse`]) and holds no
    /// control character anywhere (text after `OK` or `DUNNO`, which Postfix ignores,
    /// included).
    pub fn spelled(value: &str) -> Result<Self, ActionError> {
        if value.contains(char::is_control) {
            return Err(ActionError::ControlChar("action"));
        }
        let action = Action::parse(value)?;
        Ok(Self {
            value: value.to_owned(),
            action: Some(action),
        })
    }

    /// A restriction name for Postfix to evaluate: one word of letters, digits and `_`
    /// starting with a letter (how `main.cf` parameter names and built-in restrictions are
    /// spelled), that is not an action word (those are [`Reply::spelled`] or an [`Action`])
    /// and names no lookup table (Postfix refuses those in access results).
    pub fn restriction_class(name: &str) -> Result<Self, ActionError> {
        const WHAT: &str = "restriction class name";
        let shaped = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !shaped {
            return Err(ActionError::BadArgument(WHAT));
        }
        if Action::parse(name) != Err(ActionError::UnknownAction) {
            return Err(ActionError::BadArgument(WHAT));
        }
        Ok(Self {
            value: name.to_owned(),
            action: None,
        })
    }

    /// The action this reply reads as (`None` for a restriction class).
    pub fn action(&self) -> Option<&Action> {
        self.action.as_ref()
    }

    /// The value of `action=` as it is sent.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Appends the whole reply, `action=...\n\n`, to `out` (write it with one write).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.value.len() + 9);
        out.put_slice(b"action=");
        out.put_slice(self.value.as_bytes());
        out.put_slice(b"\n\n");
    }
}

impl fmt::Display for Reply {
    /// The value of the `action=` attribute.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

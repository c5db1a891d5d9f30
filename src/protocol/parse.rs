//! Bytes in, [`Request`] out: JSON validation by simd-json, the normalisation rules of
//! PROTOCOL.md, and the raw byte spans of the nested payloads.
//!
//! The nested payloads (`offer`, `answer`, `icecandidate`, `data`) are never decoded into a
//! value tree: simd-json's stage-1 structural index gives where every top-level member's
//! value starts and ends in the original bytes, and those bytes are spliced into the relayed
//! message as they came. That keeps them JSON-equivalent to what was sent (escapes, unicode,
//! number spelling) and costs no allocation.

use std::borrow::Cow;

use simd_json::{Buffers, INPUT_PADDING, Node, StaticNode, Tape};

use super::{ErrorCode, Presence, RawJson};
use crate::indexed_enum::indexed_enum;

/// Ids (`sId`, `opponentId`, `sessionId`) longer than this after trimming get 9003.
pub const MAX_ID_BYTES: usize = 64;

indexed_enum! {
    /// The client commands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CommandKind {
        Register,
        Resume,
        Session,
        Call,
        Accept,
        IceCandidate,
        Reject,
        Stop,
        Notify,
    }
}

impl CommandKind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sId" => CommandKind::Register,
            "resume" => CommandKind::Resume,
            "session" => CommandKind::Session,
            "call" => CommandKind::Call,
            "accept" => CommandKind::Accept,
            "icecandidate" => CommandKind::IceCandidate,
            "reject" => CommandKind::Reject,
            "stop" => CommandKind::Stop,
            "notify" => CommandKind::Notify,
            _ => return None,
        })
    }

    /// The wire name, as it appears in `cmd`.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Register => "sId",
            CommandKind::Resume => "resume",
            CommandKind::Session => "session",
            CommandKind::Call => "call",
            CommandKind::Accept => "accept",
            CommandKind::IceCandidate => "icecandidate",
            CommandKind::Reject => "reject",
            CommandKind::Stop => "stop",
            CommandKind::Notify => "notify",
        }
    }
}

/// The five commands that act on a session and are relayed to the opponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    Call,
    Accept,
    IceCandidate,
    Reject,
    Stop,
}

impl Relay {
    pub fn cmd(self) -> &'static str {
        match self {
            Relay::Call => "call",
            Relay::Accept => "accept",
            Relay::IceCandidate => "icecandidate",
            Relay::Reject => "reject",
            Relay::Stop => "stop",
        }
    }

    /// The nested field this command carries, if any.
    pub fn payload_field(self) -> Option<&'static str> {
        match self {
            Relay::Call => Some("offer"),
            Relay::Accept => Some("answer"),
            Relay::IceCandidate => Some("icecandidate"),
            Relay::Reject | Relay::Stop => None,
        }
    }
}

/// A validated command, borrowing from the request it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Register {
        sid: &'a str,
        /// The `resume` field; the core decides what it means (resume may be off).
        resume: OptIn,
        /// The `presence` field, if it was sent (a bad one never gets this far: 9003).
        presence: Option<Presence>,
    },
    /// Take a registered client over on this connection (PROTOCOL.md, *Resume*).
    Resume {
        sid: &'a str,
        /// As sent: the core compares it with the client's, whatever its shape.
        token: &'a str,
        /// Messages the client received since its last registration or resume reply.
        received: u64,
    },
    Session {
        opponent_id: &'a str,
    },
    Relay {
        action: Relay,
        session_id: &'a str,
        /// `offer` / `answer` / `icecandidate`; `None` for reject and stop.
        payload: Option<RawJson<'a>>,
    },
    Notify {
        opponent_id: &'a str,
        notify_type: &'a str,
        /// The optional `data`.
        data: Option<RawJson<'a>>,
    },
}

/// A boolean opt-in field such as `resume`: only `true` opts in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptIn {
    #[default]
    Absent,
    Yes,
    /// Present, but not `true`.
    Invalid,
}

/// The `presence` field of a registration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PresenceField {
    #[default]
    Absent,
    Given(Presence),
    /// Present, but not one of the mode names (or not a string).
    Invalid,
}

/// A top-level field after normalisation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Scalar<'a> {
    #[default]
    Missing,
    /// A string (trimmed) or a number (as JavaScript prints it).
    Text(Cow<'a, str>),
    /// `true`, `false`, `null`, an object or an array.
    Other,
}

/// A message that passed checks 1-3 (JSON, shape, known command). Its fields are checked
/// by [`Request::command`], which the core calls only after the registration check, so the
/// error order of PROTOCOL.md holds.
#[derive(Debug)]
pub struct Request<'a> {
    pub kind: CommandKind,
    sid: Scalar<'a>,
    opponent_id: Scalar<'a>,
    session_id: Scalar<'a>,
    notify_type: Scalar<'a>,
    offer: Option<RawJson<'a>>,
    answer: Option<RawJson<'a>>,
    icecandidate: Option<RawJson<'a>>,
    data: Option<RawJson<'a>>,
    resume: OptIn,
    presence: PresenceField,
    resume_token: Scalar<'a>,
    received: Scalar<'a>,
}

impl Request<'_> {
    /// Check 5 of PROTOCOL.md: the command's required fields.
    pub fn command(&self) -> Result<Command<'_>, ErrorCode> {
        match self.kind {
            CommandKind::Register => {
                let sid = id(&self.sid)?;
                // sIds are shown to other people: printable characters only.
                if sid.chars().any(char::is_control) {
                    return Err(ErrorCode::InvalidField);
                }
                let presence = match self.presence {
                    PresenceField::Absent => None,
                    PresenceField::Given(mode) => Some(mode),
                    PresenceField::Invalid => return Err(ErrorCode::InvalidField),
                };
                Ok(Command::Register { sid, resume: self.resume, presence })
            }
            CommandKind::Resume => Ok(Command::Resume {
                sid: id(&self.sid)?,
                token: match &self.resume_token {
                    Scalar::Text(text) if !text.is_empty() => text,
                    _ => return Err(ErrorCode::InvalidField),
                },
                received: count(&self.received)?,
            }),
            CommandKind::Session => Ok(Command::Session { opponent_id: id(&self.opponent_id)? }),
            CommandKind::Call => self.relay(Relay::Call, self.offer),
            CommandKind::Accept => self.relay(Relay::Accept, self.answer),
            CommandKind::IceCandidate => self.relay(Relay::IceCandidate, self.icecandidate),
            CommandKind::Reject => self.relay(Relay::Reject, None),
            CommandKind::Stop => self.relay(Relay::Stop, None),
            CommandKind::Notify => Ok(Command::Notify {
                opponent_id: id(&self.opponent_id)?,
                notify_type: match &self.notify_type {
                    Scalar::Text(text) if !text.is_empty() => text,
                    _ => return Err(ErrorCode::InvalidField),
                },
                data: self.data,
            }),
        }
    }
}

impl Request<'_> {
    fn relay<'s>(&'s self, action: Relay, payload: Option<RawJson<'s>>) -> Result<Command<'s>, ErrorCode> {
        if action.payload_field().is_some() && payload.is_none() {
            return Err(ErrorCode::InvalidField);
        }
        Ok(Command::Relay { action, session_id: id(&self.session_id)?, payload })
    }
}

fn id<'s>(field: &'s Scalar<'_>) -> Result<&'s str, ErrorCode> {
    match field {
        Scalar::Text(text) if !text.is_empty() && text.len() <= MAX_ID_BYTES => Ok(text),
        _ => Err(ErrorCode::InvalidField),
    }
}

/// A count: a non-negative integer, sent as a number or as its decimal text.
fn count(field: &Scalar<'_>) -> Result<u64, ErrorCode> {
    match field {
        // Past u64::MAX: more than was ever sent, which the core refuses with 9104.
        Scalar::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(text.parse().unwrap_or(u64::MAX))
        }
        // A JSON number of 1e21 or more is normalised as JavaScript prints it ("1e+21"):
        // still an integer, and still more than was ever sent.
        Scalar::Text(text) if text.contains("e+") => match text.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 => Ok(u64::MAX),
            _ => Err(ErrorCode::InvalidField),
        },
        _ => Err(ErrorCode::InvalidField),
    }
}

/// Reusable parse buffers. One per event loop: after warm-up, parsing allocates nothing
/// (numbers given where a string is expected excepted).
#[derive(Default)]
pub struct Parser {
    /// simd-json unescapes strings in place, so it works on a padded copy and the original
    /// bytes stay intact for splicing.
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl Parser {
    /// Checks 1-3 of PROTOCOL.md and normalisation.
    pub fn parse<'a>(&'a mut self, raw: &'a [u8]) -> Result<Request<'a>, ErrorCode> {
        let Parser { scratch, buffers, tape } = self;
        scratch.clear();
        scratch.extend_from_slice(raw);
        scratch.resize(raw.len() + INPUT_PADDING, 0);
        let mut nodes: Tape<'a> = tape.take().unwrap_or_else(Tape::null).reset();
        let result = simd_json::fill_tape_padded(scratch, raw.len(), buffers, &mut nodes)
            .map_err(|_| ErrorCode::InvalidJson)
            .and_then(|()| read_request(&nodes.0, buffers.structural_indexes(), raw));
        *tape = Some(nodes.reset());
        result
    }
}

fn read_request<'a>(
    nodes: &[Node<'a>],
    structurals: &[u32],
    raw: &'a [u8],
) -> Result<Request<'a>, ErrorCode> {
    let Some(&Node::Object { len: members, .. }) = nodes.first() else {
        return Err(ErrorCode::BadShape);
    };
    let mut cmd = Scalar::Missing;
    let mut request = Request {
        kind: CommandKind::Register,
        sid: Scalar::Missing,
        opponent_id: Scalar::Missing,
        session_id: Scalar::Missing,
        notify_type: Scalar::Missing,
        offer: None,
        answer: None,
        icecandidate: None,
        data: None,
        resume: OptIn::Absent,
        presence: PresenceField::Absent,
        resume_token: Scalar::Missing,
        received: Scalar::Missing,
    };
    let mut spans = MemberSpans { structurals, raw, next: 1 };
    let mut at = 1;
    for _ in 0..members {
        let (Some(Node::String(key)), Some(value)) = (nodes.get(at), nodes.get(at + 1)) else {
            return Err(ErrorCode::InvalidJson);
        };
        at += 1 + node_span(value);
        let span = spans.next_value().ok_or(ErrorCode::InvalidJson)?;
        // Duplicate keys: the last one wins, as in JavaScript's JSON.parse.
        match *key {
            "cmd" => cmd = scalar(value),
            "sId" => request.sid = scalar(value),
            "opponentId" => request.opponent_id = scalar(value),
            "sessionId" => request.session_id = scalar(value),
            "type" => request.notify_type = scalar(value),
            "offer" => request.offer = Some(span),
            "answer" => request.answer = Some(span),
            "icecandidate" => request.icecandidate = Some(span),
            "data" => request.data = Some(span),
            "resume" => {
                request.resume = if matches!(value, Node::Static(StaticNode::Bool(true))) {
                    OptIn::Yes
                } else {
                    OptIn::Invalid
                }
            }
            // Only a string names a mode (a number is not normalised into one); it is
            // trimmed like every top-level string.
            "presence" => {
                request.presence = match value {
                    Node::String(name) => {
                        Presence::from_name(name.trim()).map_or(PresenceField::Invalid, PresenceField::Given)
                    }
                    _ => PresenceField::Invalid,
                }
            }
            "resumeToken" => request.resume_token = scalar(value),
            "received" => request.received = scalar(value),
            _ => {}
        }
    }
    request.kind = match cmd {
        Scalar::Text(name) => CommandKind::from_name(&name).ok_or(ErrorCode::UnknownCommand)?,
        Scalar::Missing | Scalar::Other => return Err(ErrorCode::BadShape),
    };
    Ok(request)
}

/// How many tape nodes a value occupies, itself included.
fn node_span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => 1 + count,
        Node::String(_) | Node::Static(_) => 1,
    }
}

fn scalar<'a>(node: &Node<'a>) -> Scalar<'a> {
    let number = match *node {
        Node::String(text) => return Scalar::Text(Cow::Borrowed(text.trim())),
        Node::Static(StaticNode::I64(n)) => n as f64,
        Node::Static(StaticNode::U64(n)) => n as f64,
        Node::Static(StaticNode::F64(n)) => n,
        _ => return Scalar::Other,
    };
    // JavaScript's Number#toString: what a browser client would have sent as a string.
    Scalar::Text(Cow::Owned(ryu_js::Buffer::new().format(number).to_owned()))
}

/// Walks the structural index of the root object, yielding each member's value as the raw
/// bytes between its `:` and the `,` or `}` that ends it.
struct MemberSpans<'s, 'a> {
    structurals: &'s [u32],
    raw: &'a [u8],
    /// Index into `structurals` of the next member's key.
    next: usize,
}

impl<'a> MemberSpans<'_, 'a> {
    fn next_value(&mut self) -> Option<RawJson<'a>> {
        // structurals[next] is the key, next + 1 the ':', next + 2 the value's first byte.
        let start = *self.structurals.get(self.next + 2)? as usize;
        let mut depth = 0usize;
        let mut at = self.next + 2;
        let end = loop {
            let offset = *self.structurals.get(at)? as usize;
            match *self.raw.get(offset)? {
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break offset,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break offset,
                _ => {}
            }
            at += 1;
        };
        self.next = at + 1;
        Some(RawJson::from_validated(self.raw.get(start..end)?.trim_ascii_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Command<'static>, ErrorCode> {
        let mut parser = Parser::default();
        let request = parser.parse(json.as_bytes())?;
        let command = request.command()?;
        // Leak to hand out 'static borrows in tests only.
        Ok(leak(command))
    }

    fn leak(command: Command<'_>) -> Command<'static> {
        let s = |t: &str| -> &'static str { Box::leak(t.to_owned().into_boxed_str()) };
        let b = |t: RawJson<'_>| -> RawJson<'static> {
            RawJson::from_validated(Box::leak(t.as_bytes().to_vec().into_boxed_slice()))
        };
        match command {
            Command::Register { sid, resume, presence } => {
                Command::Register { sid: s(sid), resume, presence }
            }
            Command::Resume { sid, token, received } => {
                Command::Resume { sid: s(sid), token: s(token), received }
            }
            Command::Session { opponent_id } => Command::Session { opponent_id: s(opponent_id) },
            Command::Relay { action, session_id, payload } => {
                Command::Relay { action, session_id: s(session_id), payload: payload.map(b) }
            }
            Command::Notify { opponent_id, notify_type, data } => Command::Notify {
                opponent_id: s(opponent_id),
                notify_type: s(notify_type),
                data: data.map(b),
            },
        }
    }

    fn raw(bytes: &[u8]) -> Option<RawJson<'_>> {
        Some(RawJson::validate(bytes).expect("the test's payload is JSON"))
    }

    fn kind_error(json: &[u8]) -> ErrorCode {
        Parser::default().parse(json).map(|r| r.kind).expect_err("should fail checks 1-3")
    }

    #[test]
    fn invalid_json_is_9000() {
        for bad in [&b""[..], b" ", b"{", b"{\"cmd\":}", b"nul", b"{\"cmd\":\"sId\"}x", b"\xff\xfe"] {
            assert_eq!(kind_error(bad), ErrorCode::InvalidJson, "{:?}", String::from_utf8_lossy(bad));
        }
        // Invalid UTF-8 inside an otherwise fine message (binary frames reach the parser).
        assert_eq!(kind_error(b"{\"cmd\":\"sId\",\"sId\":\"\xc3\x28\"}"), ErrorCode::InvalidJson);
    }

    #[test]
    fn wrong_shape_is_9001() {
        for bad in [
            "[]",
            "1",
            "\"sId\"",
            "null",
            "{}",
            r#"{"sId":"a"}"#,
            r#"{"cmd":true}"#,
            r#"{"cmd":null}"#,
            r#"{"cmd":{}}"#,
            r#"{"cmd":["sId"]}"#,
        ] {
            assert_eq!(kind_error(bad.as_bytes()), ErrorCode::BadShape, "{bad}");
        }
    }

    #[test]
    fn unknown_commands_are_9002_after_normalisation() {
        for bad in [
            r#"{"cmd":5}"#,
            r#"{"cmd":"clu"}"#,
            r#"{"cmd":"ssu"}"#,
            r#"{"cmd":"leave"}"#,
            r#"{"cmd":"error"}"#,
            r#"{"cmd":"SID"}"#,
            r#"{"cmd":""}"#,
        ] {
            assert_eq!(kind_error(bad.as_bytes()), ErrorCode::UnknownCommand, "{bad}");
        }
    }

    #[test]
    fn top_level_strings_are_trimmed_and_numbers_become_strings() {
        assert_eq!(
            parse(r#"{"cmd":" sId ","sId":"  a\t"}"#),
            Ok(Command::Register { sid: "a", resume: OptIn::Absent, presence: None })
        );
        assert_eq!(
            parse(r#"{"cmd":"sId","sId":42}"#),
            Ok(Command::Register { sid: "42", resume: OptIn::Absent, presence: None })
        );
        for (number, text) in [
            ("42.0", "42"),
            ("4.2e1", "42"),
            ("1e3", "1000"),
            ("4.5", "4.5"),
            ("-0", "0"),
            ("-7", "-7"),
            ("0.1", "0.1"),
            ("1e21", "1e+21"),
            ("1e-7", "1e-7"),
            ("12345678901234567890", "12345678901234567000"),
        ] {
            let json = format!(r#"{{"cmd":"sId","sId":{number}}}"#);
            assert_eq!(
                parse(&json),
                Ok(Command::Register { sid: text, resume: OptIn::Absent, presence: None }),
                "{number}"
            );
        }
        // Unicode white space is trimmed too (str::trim); escapes are decoded.
        assert_eq!(
            parse("{\"cmd\":\"sId\",\"sId\":\"\u{3000}b\u{a0}\"}"),
            Ok(Command::Register { sid: "b", resume: OptIn::Absent, presence: None })
        );
        assert_eq!(
            parse(r#"{"cmd":"sId","sId":"\u0041\n"}"#),
            Ok(Command::Register { sid: "A", resume: OptIn::Absent, presence: None })
        );
        // The last duplicate wins.
        assert_eq!(
            parse(r#"{"cmd":"sId","sId":"x","sId":"y"}"#),
            Ok(Command::Register { sid: "y", resume: OptIn::Absent, presence: None })
        );
    }

    #[test]
    fn required_fields_are_9003() {
        for bad in [
            r#"{"cmd":"sId"}"#,
            r#"{"cmd":"sId","sId":""}"#,
            r#"{"cmd":"sId","sId":"   "}"#,
            r#"{"cmd":"sId","sId":null}"#,
            r#"{"cmd":"sId","sId":true}"#,
            r#"{"cmd":"sId","sId":{"a":1}}"#,
            r#"{"cmd":"sId","sId":["a"]}"#,
            r#"{"cmd":"session"}"#,
            r#"{"cmd":"call","sessionId":"s"}"#,
            r#"{"cmd":"call","offer":{}}"#,
            r#"{"cmd":"accept","sessionId":"s"}"#,
            r#"{"cmd":"icecandidate","sessionId":"s"}"#,
            r#"{"cmd":"reject"}"#,
            r#"{"cmd":"stop","sessionId":null}"#,
            r#"{"cmd":"notify","opponentId":"b"}"#,
            r#"{"cmd":"notify","opponentId":"b","type":" "}"#,
            r#"{"cmd":"notify","opponentId":"b","type":null}"#,
            r#"{"cmd":"notify","type":"ring"}"#,
            r#"{"cmd":"sId","sId":"a\u0000b"}"#,
            r#"{"cmd":"sId","sId":"a\u001bb"}"#,
            r#"{"cmd":"sId","sId":"a\u007fb"}"#,
            r#"{"cmd":"sId","sId":"a\u0085b"}"#,
        ] {
            assert_eq!(parse(bad), Err(ErrorCode::InvalidField), "{bad}");
        }
    }

    #[test]
    fn ids_are_limited_to_64_bytes_after_trimming() {
        let ok = "é".repeat(32); // 64 bytes
        let json = format!(r#"{{"cmd":"sId","sId":"  {ok}  "}}"#);
        assert_eq!(
            parse(&json),
            Ok(Command::Register {
                sid: Box::leak(ok.into_boxed_str()),
                resume: OptIn::Absent,
                presence: None
            })
        );
        let long = format!(r#"{{"cmd":"sId","sId":"{}"}}"#, "a".repeat(65));
        assert_eq!(parse(&long), Err(ErrorCode::InvalidField));
    }

    #[test]
    fn payloads_are_the_raw_bytes_as_sent() {
        let cases: [(&str, &str); 9] = [
            ("null", "null"),
            (
                " {\"sdp\" : \"v=0\\r\\n\\u00e9\", \"type\":\"offer\"} ",
                "{\"sdp\" : \"v=0\\r\\n\\u00e9\", \"type\":\"offer\"}",
            ),
            ("[1, [2, {\"a\":\"]}\"}], 3]", "[1, [2, {\"a\":\"]}\"}], 3]"),
            ("\"plain\"", "\"plain\""),
            ("1.50e2", "1.50e2"),
            ("-0", "-0"),
            ("true", "true"),
            ("{}", "{}"),
            ("\"\\\"},{\"", "\"\\\"},{\""),
        ];
        for (sent, relayed) in cases {
            let json = format!(
                r#"{{"x":[{{}}],"cmd":"call","offer":{sent} ,"sessionId":"s","extra":{{"offer":1}}}}"#
            );
            assert_eq!(
                parse(&json),
                Ok(Command::Relay { action: Relay::Call, session_id: "s", payload: raw(relayed.as_bytes()) }),
                "{sent}"
            );
        }
        assert_eq!(
            parse(r#"{"cmd":"icecandidate","sessionId":"s","icecandidate":null}"#),
            Ok(Command::Relay { action: Relay::IceCandidate, session_id: "s", payload: raw(b"null") })
        );
        assert_eq!(
            parse(r#"{"data":{"k":[1]},"cmd":"notify","opponentId":7,"type":"ring"}"#),
            Ok(Command::Notify { opponent_id: "7", notify_type: "ring", data: raw(b"{\"k\":[1]}") })
        );
        assert_eq!(
            parse(r#"{"cmd":"notify","opponentId":"b","type":"ring"}"#),
            Ok(Command::Notify { opponent_id: "b", notify_type: "ring", data: None })
        );
    }

    #[test]
    fn reject_and_stop_need_only_the_session() {
        assert_eq!(
            parse(r#"{"cmd":"reject","sessionId":"s","offer":1}"#),
            Ok(Command::Relay { action: Relay::Reject, session_id: "s", payload: None })
        );
        assert_eq!(
            parse(r#"{"cmd":"stop","sessionId":" s "}"#),
            Ok(Command::Relay { action: Relay::Stop, session_id: "s", payload: None })
        );
    }

    #[test]
    fn one_parser_handles_many_messages() {
        let mut parser = Parser::default();
        for i in 0..100 {
            let json = format!(r#"{{"cmd":"sId","sId":"client-{i}"}}"#);
            let request = parser.parse(json.as_bytes()).expect("parses");
            assert_eq!(
                request.command(),
                Ok(Command::Register { sid: &format!("client-{i}"), resume: OptIn::Absent, presence: None })
            );
            assert_eq!(parser.parse(b"{").map(|r| r.kind), Err(ErrorCode::InvalidJson));
        }
    }

    #[test]
    fn presence_fields() {
        for (text, mode) in [("full", Presence::Full), ("delta", Presence::Delta), (" none ", Presence::None)]
        {
            let json = format!(r#"{{"cmd":"sId","sId":"a","presence":"{text}"}}"#);
            assert_eq!(
                parse(&json),
                Ok(Command::Register { sid: "a", resume: OptIn::Absent, presence: Some(mode) }),
                "{text}"
            );
        }
        for other in [r#""Delta""#, r#""""#, "1", "true", "null", r#"["delta"]"#, r#"{"delta":1}"#] {
            let json = format!(r#"{{"cmd":"sId","sId":"a","presence":{other}}}"#);
            assert_eq!(parse(&json), Err(ErrorCode::InvalidField), "{other}");
        }
        // Only registrations read it.
        assert!(parse(r#"{"cmd":"session","opponentId":"b","presence":7}"#).is_ok());
    }

    #[test]
    fn resume_fields() {
        let yes = parse(r#"{"cmd":"sId","sId":"a","resume":true}"#);
        assert_eq!(yes, Ok(Command::Register { sid: "a", resume: OptIn::Yes, presence: None }));
        for other in ["false", "1", "\"true\"", "null", "{}"] {
            let json = format!(r#"{{"cmd":"sId","sId":"a","resume":{other}}}"#);
            assert_eq!(
                parse(&json),
                Ok(Command::Register { sid: "a", resume: OptIn::Invalid, presence: None }),
                "{other}"
            );
        }
        let ok = parse(r#"{"cmd":"resume","sId":" a ","resumeToken":"T","received":7}"#);
        assert_eq!(ok, Ok(Command::Resume { sid: "a", token: "T", received: 7 }));
        let text = parse(r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":"12"}"#);
        assert_eq!(text, Ok(Command::Resume { sid: "a", token: "T", received: 12 }));
        assert_eq!(
            parse(r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":3.0}"#),
            Ok(Command::Resume { sid: "a", token: "T", received: 3 })
        );
        let huge = parse(
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":"123456789012345678901234567890"}"#,
        );
        assert_eq!(
            huge,
            Ok(Command::Resume { sid: "a", token: "T", received: u64::MAX }),
            "more than was sent: 9104"
        );
        for number in ["1e30", "1e21", "\"1e+25\""] {
            let json = format!(r#"{{"cmd":"resume","sId":"a","resumeToken":"T","received":{number}}}"#);
            assert_eq!(
                parse(&json),
                Ok(Command::Resume { sid: "a", token: "T", received: u64::MAX }),
                "{number}"
            );
        }
        for bad in [
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":-1e30}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":"1e+x"}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T"}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":-1}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":1.5}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":true}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"T","received":"x"}"#,
            r#"{"cmd":"resume","sId":"a","received":0}"#,
            r#"{"cmd":"resume","sId":"a","resumeToken":"","received":0}"#,
            r#"{"cmd":"resume","resumeToken":"T","received":0}"#,
        ] {
            assert_eq!(parse(bad), Err(ErrorCode::InvalidField), "{bad}");
        }
    }
}

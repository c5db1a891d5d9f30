//! The error codes of PROTOCOL.md and the fixed `error` message each one sends.

use crate::indexed_enum::indexed_enum;

indexed_enum! {
    /// Every error a client can receive. The numeric value is the wire code.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u16)]
    pub enum ErrorCode {
        InvalidJson = 9000,
        BadShape = 9001,
        UnknownCommand = 9002,
        InvalidField = 9003,
        NotRegistered = 9100,
        AlreadyRegistered = 9101,
        SidTaken = 9102,
        SidNotAllowed = 9103,
        ResumeRefused = 9104,
        RoomFull = 9105,
        SessionWithSelf = 9200,
        OpponentNotFound = 9201,
        AlreadyInSession = 9202,
        OpponentBusy = 9203,
        SessionNotFound = 9204,
        NotifySelf = 9300,
        NotifyTargetNotFound = 9301,
        OpponentGone = 9401,
        RateLimited = 9500,
    }
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The complete `error` message for this code. Errors never carry client data, so each
    /// one is a constant: answering an error costs no formatting and no allocation.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => r#"{"cmd":"error","code":9000,"message":"message is not valid JSON"}"#,
            ErrorCode::BadShape => {
                r#"{"cmd":"error","code":9001,"message":"message must be a JSON object with a string cmd"}"#
            }
            ErrorCode::UnknownCommand => r#"{"cmd":"error","code":9002,"message":"unknown command"}"#,
            ErrorCode::InvalidField => {
                r#"{"cmd":"error","code":9003,"message":"a required field is missing or invalid"}"#
            }
            ErrorCode::NotRegistered => r#"{"cmd":"error","code":9100,"message":"register with sId first"}"#,
            ErrorCode::AlreadyRegistered => {
                r#"{"cmd":"error","code":9101,"message":"this connection is already registered"}"#
            }
            ErrorCode::SidTaken => r#"{"cmd":"error","code":9102,"message":"that sId is in use"}"#,
            ErrorCode::SidNotAllowed => {
                r#"{"cmd":"error","code":9103,"message":"this connection may not register that sId"}"#
            }
            // One text for every cause: a client learns nothing about which check failed.
            ErrorCode::ResumeRefused => r#"{"cmd":"error","code":9104,"message":"resume refused"}"#,
            ErrorCode::RoomFull => r#"{"cmd":"error","code":9105,"message":"the room is full"}"#,
            ErrorCode::SessionWithSelf => {
                r#"{"cmd":"error","code":9200,"message":"cannot open a session with yourself"}"#
            }
            ErrorCode::OpponentNotFound => r#"{"cmd":"error","code":9201,"message":"opponent not found"}"#,
            ErrorCode::AlreadyInSession => {
                r#"{"cmd":"error","code":9202,"message":"you are already in a session"}"#
            }
            ErrorCode::OpponentBusy => r#"{"cmd":"error","code":9203,"message":"opponent is in a session"}"#,
            ErrorCode::SessionNotFound => r#"{"cmd":"error","code":9204,"message":"session not found"}"#,
            ErrorCode::NotifySelf => r#"{"cmd":"error","code":9300,"message":"cannot notify yourself"}"#,
            ErrorCode::NotifyTargetNotFound => {
                r#"{"cmd":"error","code":9301,"message":"notify target not found"}"#
            }
            ErrorCode::OpponentGone => {
                r#"{"cmd":"error","code":9401,"message":"the opponent's connection is gone; the session closed"}"#
            }
            ErrorCode::RateLimited => {
                r#"{"cmd":"error","code":9500,"message":"rate limit exceeded; the command was dropped"}"#
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_json_carrying_its_own_code() {
        for code in ErrorCode::ALL {
            let mut bytes = code.message().as_bytes().to_vec();
            let value = simd_json::to_owned_value(&mut bytes).expect("valid JSON");
            use simd_json::prelude::*;
            assert_eq!(value.get_str("cmd"), Some("error"));
            assert_eq!(value.get_u64("code"), Some(u64::from(code.code())));
            assert!(value.get_str("message").is_some_and(|m| !m.is_empty()));
        }
    }
}

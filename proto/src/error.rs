use serde::{Deserialize, Serialize};

/// Why a text frame is not a valid protocol message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("unknown message type '{0}'")]
    UnknownType(String),
    #[error("message '{kind}' is missing field '{field}'")]
    MissingField { kind: String, field: &'static str },
}

impl ParseError {
    /// The v2 error code a server answers this parse error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::Malformed(_) => ErrorCode::MalformedMessage,
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
            ParseError::Invalid(_) | ParseError::MissingField { .. } => ErrorCode::InvalidMessage,
        }
    }
}

/// Stable, machine-readable error codes of protocol version 2 (`error.code`).
///
/// Codes are only ever added; a client must treat an unknown code like `internal`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    MalformedMessage,
    /// The frame is JSON but not a message of the protocol (wrong field types, missing fields).
    InvalidMessage,
    /// The `type` is not one the server knows.
    UnknownType,
    /// Binary frames are not part of the protocol.
    BinaryFrame,
    /// The peer named in `startSession` is not connected.
    UnknownPeer,
    /// The session named does not exist (anymore).
    UnknownSession,
    /// The sender is not one of the two members of the session it names.
    NotSessionMember,
    /// The requested roles are incompatible (producer and consumer at once).
    InvalidRoles,
    /// `startSession` named a peer that is neither a producer nor a consumer.
    InvalidSessionTarget,
    /// A consumer tried to send an SDP offer.
    OfferNotAllowed,
    /// The peer sent more messages per second than the node allows.
    RateLimited,
    /// The cluster bus is unreachable; cross-node operations are unavailable for now.
    ClusterUnavailable,
    /// The peer's token does not grant it (a role, a producer name, a stream).
    Forbidden,
    /// An operator disconnected the peer (the operations API); the connection closes next.
    Kicked,
    /// Anything else: a bug, or a code this client does not know yet.
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed-message",
            ErrorCode::InvalidMessage => "invalid-message",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::BinaryFrame => "binary-frame",
            ErrorCode::UnknownPeer => "unknown-peer",
            ErrorCode::UnknownSession => "unknown-session",
            ErrorCode::NotSessionMember => "not-session-member",
            ErrorCode::InvalidRoles => "invalid-roles",
            ErrorCode::InvalidSessionTarget => "invalid-session-target",
            ErrorCode::OfferNotAllowed => "offer-not-allowed",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::ClusterUnavailable => "cluster-unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Kicked => "kicked",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

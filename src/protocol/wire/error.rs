//! Typed outcomes of decoding and encoding.
//!
//! DESIGN 2.4 sorts every receive failure into two kinds, and the types follow it:
//! [`FrameError`] means "drop, close the connection, report an error" (rules 1 and 2), while
//! [`DropReason`] means "silently drop this message and keep the connection" (rules 3 and 4).
//! [`FieldError`] is the detail behind a malformed body.

use thiserror::Error;

/// A malformed field (DESIGN 2.2), found while decoding a message body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// Fewer bytes than the structure needs.
    #[error("{what} cut short: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field identifier the protocol does not define.
    #[error("unknown field id {0:#06x}")]
    UnknownField(u16),
    /// A field-length below the 4-byte field header.
    #[error("{field} field-length {len} is below the 4-byte header")]
    LengthTooSmall {
        /// The field.
        field: &'static str,
        /// The declared field-length.
        len: usize,
    },
    /// A MESSAGE_HEADER whose field-length is not 12.
    #[error("MESSAGE_HEADER field-length {len}, must be 12")]
    HeaderLength {
        /// The declared field-length.
        len: usize,
    },
    /// A string whose declared length disagrees with its field-length.
    #[error("{field} declares {declared} bytes but its field holds {actual}")]
    StringLength {
        /// The field.
        field: &'static str,
        /// Length in the string body.
        declared: usize,
        /// Bytes the field actually holds.
        actual: usize,
    },
    /// An L bit that contradicts the string length.
    #[error("{field} L bit contradicts length {len}")]
    LBit {
        /// The field.
        field: &'static str,
        /// The string length.
        len: usize,
    },
    /// A string that is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A field where another was required.
    #[error("expected {expected}, found {found}")]
    UnexpectedField {
        /// The field required.
        expected: &'static str,
        /// The field found.
        found: &'static str,
    },
    /// An entry count that cannot fit the bytes of the array.
    #[error("{field} declares {entries} entries, more than its bytes can hold")]
    EntryCount {
        /// The field.
        field: &'static str,
        /// The declared count.
        entries: usize,
    },
    /// Bytes left over inside a field or message after its last element.
    #[error("{extra} trailing bytes after {field}")]
    TrailingBytes {
        /// The field or message.
        field: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// A framing or header error: the connection must be closed (DESIGN 2.4 rules 1 and 2).
#[derive(Debug, Error)]
pub enum FrameError {
    /// The separation header's signature is not 0x5350.
    #[error("bad signature {0:#06x}, expected 0x5350")]
    BadSignature(u16),
    /// The separation header declares more than 0xFFEB bytes.
    #[error("message length {len} exceeds the maximum {max}")]
    TooLong {
        /// The declared length.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// The message does not begin with a well-formed MESSAGE_HEADER field.
    #[error("missing or malformed MESSAGE_HEADER: {0}")]
    BadHeader(&'static str),
    /// A MESSAGE_HEADER with a version other than 1.0.
    #[error("unsupported version {major}.{minor}, only 1.0 is defined")]
    Version {
        /// Major version received.
        major: u8,
        /// Minor version received.
        minor: u8,
    },
    /// The stream ended in the middle of a message.
    #[error("connection ended inside a message ({0} bytes buffered)")]
    Truncated(usize),
    /// The underlying transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A short label for metrics (`reason` label values).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSignature(_) => "bad_signature",
            Self::TooLong { .. } => "too_long",
            Self::BadHeader(_) => "bad_header",
            Self::Version { .. } => "bad_version",
            Self::Truncated(_) => "truncated",
            Self::Io(_) => "io",
        }
    }
}

/// Why a message was silently dropped (DESIGN 2.4 rules 3 and 4).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DropReason {
    /// A message type the protocol does not define.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// A known message type whose body does not match DESIGN 2.3 exactly.
    #[error("malformed {message}: {error}")]
    Malformed {
        /// The message type's spec name.
        message: &'static str,
        /// What was wrong.
        error: FieldError,
    },
}

impl DropReason {
    /// A short label for metrics (`reason` label values).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => "unknown_type",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// A message that cannot be encoded (or, through a `Framed` sink, written).
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The encoded message would reach the 0xFFF0-byte limit of spec 2.2.1.
    #[error("message of {len} bytes is too large: it must be smaller than {limit} bytes")]
    TooLarge {
        /// The encoded size.
        len: usize,
        /// The exclusive limit (0xFFF0).
        limit: usize,
    },
    /// The transport failed while writing (only through a `Framed` sink).
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

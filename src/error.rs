//! The one error type of modeld and its one exhaustive mapping to gRPC status codes.

// Every variant is mapped on purpose: a new variant must be placed in each map, never fall
// into a catch-all arm.
#![deny(clippy::wildcard_enum_match_arm)]

/// What went wrong, named for what the caller can do about it.
///
/// Every fallible path in the server ends in one of these; [`From<Error> for tonic::Status`]
/// is the only place that turns them into gRPC codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (shape, datatype, name, value out of range).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named model (or other entity) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The entity already exists (duplicate model name).
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows this (model not active, file missing or
    /// changed, deleting the active model).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The registry's active model changed between an activation's checks and its commit:
    /// nothing was changed, and the activation may run its checks again (a precondition
    /// failure to clients).
    #[error("{0}")]
    ActiveChanged(String),
    /// A model file cannot be used: missing, unreadable, not what the registry's checksum says,
    /// or not a model this server can load. The caller can fix the file or pick another model;
    /// the kind is kept so that the status can say why a server is degraded.
    #[error("{message}")]
    ModelFile {
        /// What is wrong with the file.
        problem: FileProblem,
        /// For people; names the file by its path relative to the model root.
        message: String,
        /// What failed underneath (the file system, the engine), for the log.
        #[source]
        source: Option<Source>,
    },
    /// Try again later: no model is loaded yet, or the registry database is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// Too much work queued already: try again after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        /// What is exhausted.
        message: String,
        /// When a retry is likely to be accepted.
        retry_after: std::time::Duration,
    },
    /// The request's deadline passed before it could be computed; it was not computed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The registry database failed or refused; its `source` (the driver's words: SQL, hosts,
    /// constraint names) goes to the log and to the CLI, never to a client.
    #[error("{}: {source}", fault.words())]
    Database {
        /// What kind of failure.
        fault: DbFault,
        /// The driver's error (its words: SQL, hosts, constraint names).
        #[source]
        source: std::sync::Arc<sqlx::Error>,
    },
    /// A bug or an unexpected failure; details are logged, not sent to the client.
    #[error("internal error: {message}")]
    Internal {
        /// What was being done.
        message: String,
        /// What failed underneath, if anything did.
        #[source]
        source: Option<Source>,
    },
}

/// An error underneath one of ours, kept for the log (shared: [`Error`] is cloned into
/// statuses and events).
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// What kind of registry database failure ([`Error::Database`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// Cannot be reached, or is shutting down, overloaded or dropped: try again.
    Unreachable,
    /// A unique constraint (a name or version that exists, a second active model).
    Conflict,
    /// A check constraint.
    Check,
    /// Anything else.
    Other,
}

impl DbFault {
    fn words(self) -> &'static str {
        match self {
            Self::Unreachable => "model registry database is unreachable",
            Self::Conflict => "registry constraint violated",
            Self::Check => "registry check violated",
            Self::Other => "registry database error",
        }
    }

    /// What a client is told (with the request id that finds the detail in the log).
    fn client_words(self) -> &'static str {
        match self {
            Self::Unreachable => "the model registry database is unreachable; try again",
            Self::Conflict => {
                "the change conflicts with what the registry holds (a name or version that exists, or a second active model)"
            }
            Self::Check => "the registry refused a value of this change",
            Self::Other => "the model registry database failed",
        }
    }
}

/// What is wrong with a model file ([`Error::ModelFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProblem {
    /// The file does not exist (or is not a regular file).
    Missing,
    /// The file exists but cannot be read.
    Unreadable,
    /// The file's sha256 differs from the registry's.
    ChecksumMismatch,
    /// The file is not a model this server can load, type, optimise or run.
    NotLoadable,
    /// The file holds a model whose inputs or outputs would break the served model's clients.
    SignatureChanged,
}

impl Error {
    /// A [`Error::ModelFile`].
    pub fn model_file(problem: FileProblem, message: impl Into<String>) -> Self {
        Self::ModelFile {
            problem,
            message: message.into(),
            source: None,
        }
    }

    /// A [`Error::ModelFile`] caused by `source`.
    pub fn model_file_from(
        problem: FileProblem,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::ModelFile {
            problem,
            message: message.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An unexpected failure, in words.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal {
            message: e.to_string(),
            source: None,
        }
    }

    /// An unexpected failure while doing `what`, caused by `source` (whose words end the
    /// message, for the log).
    pub fn internal_from(what: impl std::fmt::Display, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal {
            message: format!("{what}: {source}"),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

impl From<sqlx::Error> for Error {
    #[expect(
        clippy::wildcard_enum_match_arm,
        reason = "sqlx's error is non-exhaustive: whatever it adds is Other"
    )]
    fn from(e: sqlx::Error) -> Self {
        let fault = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => DbFault::Unreachable,
            // PostgreSQL: connection exceptions (08…), shutdown/termination (57P…), a dropped
            // database (3D000), too many connections (53300), deadlock/serialization (40…).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("40") || c == "3D000" || c == "53300"
                }) =>
            {
                DbFault::Unreachable
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => DbFault::Conflict,
            sqlx::Error::Database(db) if db.is_check_violation() => DbFault::Check,
            // PostgreSQL: a value its text cannot hold (a NUL byte) that no check above caught.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "22021" || c == "22P05") => DbFault::Check,
            _ => DbFault::Other,
        };
        Error::Database {
            fault,
            source: std::sync::Arc::new(e),
        }
    }
}

impl Error {
    /// Whether the registry database could not be reached (try again later).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Database {
                fault: DbFault::Unreachable,
                ..
            }
        )
    }
}

impl Error {
    /// The words a client may read (status, events): without a database's own words or an
    /// internal failure's detail, which stay in the log and the CLI.
    pub fn client_message(&self) -> String {
        match self {
            Error::Database { fault, .. } => fault.words().to_string(),
            Error::Internal { .. } => "internal error; the server log has the detail".into(),
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::ActiveChanged(m)
            | Error::ModelFile { message: m, .. }
            | Error::Unavailable(m)
            | Error::ResourceExhausted { message: m, .. }
            | Error::DeadlineExceeded(m) => m.clone(),
        }
    }
}

/// The longest message a client gets back, in characters: an error that echoes a huge input
/// (a 10,000-character name) would otherwise not fit a client's header limit, and the client
/// would see RESOURCE_EXHAUSTED instead of the error.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `text` cut to at most `max` characters, with `…` where it was cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => {
            let keep = text[..at]
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(at, |(i, _)| i);
            std::borrow::Cow::Owned(format!("{}…", &text[..keep]))
        }
    }
}

/// A message whose detail stays in the log: the words for the client and the request id.
fn hidden(words: &str, id: &str) -> String {
    format!("{words} (request id {id}; the server log has the detail)")
}

/// What kind of failure a client is told, whatever the transport. Each transport maps every
/// kind on purpose: gRPC codes in [`From<Reply> for tonic::Status`], HTTP statuses in
/// `http/error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong.
    InvalidArgument,
    /// No such model (or other record).
    NotFound,
    /// It exists already (or conflicts with what the registry holds).
    AlreadyExists,
    /// Not in a state that allows this.
    FailedPrecondition,
    /// Too much work queued: try again after the hint.
    ResourceExhausted,
    /// Try again later.
    Unavailable,
    /// The deadline passed first.
    DeadlineExceeded,
    /// Failed inside; the log has the detail.
    Internal,
    /// No good bearer token (the access check's, not an [`Error`]'s).
    Unauthenticated,
    /// A token without the scope (the access check's, not an [`Error`]'s).
    PermissionDenied,
}

/// An error as a client reads it, on any transport: its kind, words without internals (cut to
/// [`MAX_MESSAGE_CHARS`]) and, for an overload, when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What kind of failure.
    pub kind: Kind,
    /// For people.
    pub message: String,
    /// When a retry is likely to be accepted (overloads).
    pub retry_after: Option<std::time::Duration>,
}

impl Reply {
    /// A reply of `kind` saying `message` (cut to [`MAX_MESSAGE_CHARS`]).
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match cut(&message, MAX_MESSAGE_CHARS) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(short) => short,
        };
        Self {
            kind,
            message,
            retry_after: None,
        }
    }
}

impl Error {
    /// What the client is told. Details that stay in the log (a database's words, an internal
    /// failure) are logged here, once, with the request id the message names.
    pub fn reply(self) -> Reply {
        match self {
            Error::InvalidArgument(m) => Reply::new(Kind::InvalidArgument, m),
            Error::NotFound(m) => Reply::new(Kind::NotFound, m),
            Error::AlreadyExists(m) => Reply::new(Kind::AlreadyExists, m),
            Error::FailedPrecondition(m) | Error::ActiveChanged(m) | Error::ModelFile { message: m, .. } => {
                Reply::new(Kind::FailedPrecondition, m)
            }
            Error::Unavailable(m) => {
                crate::client_event!(tracing::Level::WARN, "unavailable", error = %m, "unavailable");
                Reply::new(Kind::Unavailable, m)
            }
            Error::Database { fault, source } => {
                let detail = source.to_string();
                let id = crate::trace::request_id_or_new();
                let words = fault.client_words();
                match fault {
                    DbFault::Unreachable => crate::client_event!(
                        tracing::Level::WARN, "registry_unreachable", request_id = %id, error = %detail, "{words}"
                    ),
                    DbFault::Conflict | DbFault::Check => crate::client_event!(
                        tracing::Level::INFO, "registry_refused", request_id = %id, error = %detail, "{words}"
                    ),
                    DbFault::Other => crate::client_event!(
                        tracing::Level::ERROR, "registry_error", request_id = %id, error = %detail, "registry database error"
                    ),
                }
                let kind = match fault {
                    DbFault::Unreachable => Kind::Unavailable,
                    DbFault::Conflict => Kind::AlreadyExists,
                    DbFault::Check => Kind::InvalidArgument,
                    DbFault::Other => Kind::Internal,
                };
                Reply::new(kind, hidden(words, &id))
            }
            Error::ResourceExhausted { message, retry_after } => Reply {
                retry_after: Some(retry_after),
                ..Reply::new(Kind::ResourceExhausted, message)
            },
            Error::DeadlineExceeded(m) => Reply::new(Kind::DeadlineExceeded, m),
            Error::Internal { message, .. } => {
                let id = crate::trace::request_id_or_new();
                crate::client_event!(tracing::Level::ERROR, "internal", request_id = %id, error = %message, "internal error");
                Reply::new(Kind::Internal, hidden("internal error", &id))
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.reply().into()
    }
}

impl From<Reply> for tonic::Status {
    fn from(r: Reply) -> Self {
        let code = match r.kind {
            Kind::InvalidArgument => tonic::Code::InvalidArgument,
            Kind::NotFound => tonic::Code::NotFound,
            Kind::AlreadyExists => tonic::Code::AlreadyExists,
            Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
            Kind::ResourceExhausted => tonic::Code::ResourceExhausted,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Kind::Internal => tonic::Code::Internal,
            Kind::Unauthenticated => tonic::Code::Unauthenticated,
            Kind::PermissionDenied => tonic::Code::PermissionDenied,
        };
        let Some(retry_after) = r.retry_after else {
            return tonic::Status::new(code, r.message);
        };
        // Two forms of the same hint: RetryInfo in the status details (google.rpc, what typed
        // clients read) and gRPC's retry pushback trailer (what channels read).
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        let details = tonic_types::ErrorDetails::with_retry_info(Some(retry_after));
        let mut status = <tonic::Status as tonic_types::StatusExt>::with_error_details(code, r.message, details);
        if let Ok(v) = ms.to_string().parse() {
            status.metadata_mut().insert("grpc-retry-pushback-ms", v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_variant() {
        let cases = [
            (Error::InvalidArgument("a".into()), tonic::Code::InvalidArgument),
            (Error::NotFound("a".into()), tonic::Code::NotFound),
            (Error::AlreadyExists("a".into()), tonic::Code::AlreadyExists),
            (Error::FailedPrecondition("a".into()), tonic::Code::FailedPrecondition),
            (
                Error::model_file(FileProblem::Missing, "a"),
                tonic::Code::FailedPrecondition,
            ),
            (Error::Unavailable("a".into()), tonic::Code::Unavailable),
            (
                Error::ResourceExhausted {
                    message: "a".into(),
                    retry_after: std::time::Duration::from_millis(5),
                },
                tonic::Code::ResourceExhausted,
            ),
            (Error::DeadlineExceeded("a".into()), tonic::Code::DeadlineExceeded),
            (Error::internal("secret"), tonic::Code::Internal),
            (
                Error::Database {
                    fault: DbFault::Conflict,
                    source: std::sync::Arc::new(sqlx::Error::Protocol("secret".into())),
                },
                tonic::Code::AlreadyExists,
            ),
            (
                Error::Database {
                    fault: DbFault::Other,
                    source: std::sync::Arc::new(sqlx::Error::Protocol("secret".into())),
                },
                tonic::Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), code);
            assert!(
                !s.message().contains("secret"),
                "internal details leak: {}",
                s.message()
            );
        }
    }

    #[test]
    fn long_messages_are_cut_short() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("ｄｉｇｉｔｓ", 4), "ｄｉｇ…");
        let name = "x".repeat(10_000);
        let s = tonic::Status::from(Error::NotFound(format!("model {name:?} is not registered")));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message().chars().count(), MAX_MESSAGE_CHARS);
        let s = tonic::Status::from(Error::ResourceExhausted {
            message: name,
            retry_after: std::time::Duration::from_millis(5),
        });
        assert!(s.metadata().get("grpc-retry-pushback-ms").is_some(), "the hint stays");
    }

    #[test]
    fn unreachable_database_is_unavailable_and_its_words_stay_in_the_log() {
        let e = Error::from(sqlx::Error::PoolTimedOut);
        assert!(e.is_unreachable());
        assert!(e.to_string().contains("timed out"), "the CLI sees the detail: {e}");
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(
            !s.message().contains("timed out") && s.message().contains("request id"),
            "{}",
            s.message()
        );
    }
}

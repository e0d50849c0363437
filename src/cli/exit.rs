//! How a command ends: its exit code, from the first error in the cause chain that says what
//! kind of failure it was, and the errors the commands raise for it.

/// Exit code: usage (a bad flag, value or command line; clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no such model.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: refused (an invalid value or a failed precondition).
pub const EXIT_REFUSED: u8 = 4;
/// Exit code: the registry database or the server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit code: a change is committed but not every live server serves it.
pub const EXIT_NOT_SERVED: u8 = 6;

/// A committed change that not every live server serves (a load failure, or the wait ran out).
#[derive(Debug)]
pub(super) struct NotServed(pub(super) crate::fleet::Served);

impl std::fmt::Display for NotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the change is committed, but not every server serves it: {} (modeld fleet shows each server)",
            self.0.summary()
        )
    }
}

impl std::error::Error for NotServed {}

/// Exit code 6 for a change not every live server serves (after its answer is printed).
pub(super) fn check_served(served: crate::fleet::Served) -> anyhow::Result<()> {
    if served.complete() || served.skipped {
        Ok(())
    } else {
        Err(NotServed(served).into())
    }
}

/// The exit code for a failed command ([`super::args::EXIT_CODES`]), from the first error in
/// its cause chain that says what kind of failure it is: modeld's own, a gRPC status from the
/// server, or a connection that could not be made.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<NotServed>().is_some() {
            return EXIT_NOT_SERVED;
        }
        if let Some(e) = cause.downcast_ref::<crate::Error>() {
            return match e {
                crate::Error::NotFound(_) => EXIT_NOT_FOUND,
                crate::Error::InvalidArgument(_)
                | crate::Error::AlreadyExists(_)
                | crate::Error::FailedPrecondition(_)
                | crate::Error::ActiveChanged(_)
                | crate::Error::ModelFile { .. } => EXIT_REFUSED,
                crate::Error::Unavailable(_) => EXIT_UNREACHABLE,
                crate::Error::Database { fault, .. } => match fault {
                    crate::error::DbFault::Unreachable => EXIT_UNREACHABLE,
                    crate::error::DbFault::Conflict | crate::error::DbFault::Check => EXIT_REFUSED,
                    crate::error::DbFault::Other => 1,
                },
                crate::Error::ResourceExhausted { .. }
                | crate::Error::DeadlineExceeded(_)
                | crate::Error::Internal { .. } => 1,
            };
        }
        if let Some(ServerSaid(s)) = cause.downcast_ref::<ServerSaid>() {
            return match s.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists
                | tonic::Code::OutOfRange => EXIT_REFUSED,
                tonic::Code::Unavailable => EXIT_UNREACHABLE,
                _ => 1,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() || cause.downcast_ref::<NoServer>().is_some() {
            return EXIT_UNREACHABLE;
        }
    }
    1
}

/// A mistake in the command line itself (exit code 2, as clap's own).
#[derive(Debug)]
pub(super) struct Usage(pub(super) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A gRPC status the server answered with, shown as its message and code.
#[derive(Debug)]
pub(super) struct ServerSaid(pub(super) tonic::Status);

impl std::fmt::Display for ServerSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, message) = (self.0.code(), self.0.message());
        // The server words a missing token for any client ("send the header ..."); a CLI
        // user passes it with a flag or a variable.
        if code == tonic::Code::Unauthenticated && message.starts_with("this needs a bearer token") {
            return write!(
                f,
                "this server requires a token: pass --token TOKEN or set MODELD_TOKEN \
                 (whoever runs the server makes one with modeld token create --name NAME --scope read) ({code:?})"
            );
        }
        write!(f, "{message} ({code:?})")
    }
}

/// No server answers at the address: said once, with what to check.
#[derive(Debug)]
pub(super) struct NoServer {
    /// The address tried.
    pub(super) address: String,
    /// The connection's root cause.
    pub(super) why: String,
}

impl std::fmt::Display for NoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot connect to {} ({}): is `modeld serve` running there? (--server or MODELD_SERVER name another address)",
            self.address, self.why
        )
    }
}

impl std::error::Error for NoServer {}

/// The innermost cause of a connection error (`Connection refused (os error 111)`), which is
/// the part a person can act on; tonic and hyper each wrap it in their own words.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

impl std::error::Error for ServerSaid {}

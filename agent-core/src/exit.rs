//! The exit codes every agent documents (README.md, docs/agents.md, each agent's `--help`),
//! and the errors that carry them out of a run.
//!
//! An agent's `run` returns `anyhow::Error`; [`code_of`] finds an [`Ending`] in it (through any
//! context) and gives its code, 1 otherwise. So a refusal deep in the signaller ends the
//! process with 4 whatever the agent, without each agent matching on messages.

/// Done (frames/duration reached, or stopped by a signal).
pub const OK: u8 = 0;
/// A runtime failure (signalling unreachable for --retry-for, pipeline error, …).
pub const FAILURE: u8 = 1;
/// Bad arguments (also what clap exits with on a usage error).
pub const USAGE: u8 = 2;
/// consumer-agent: the producer was not found.
pub const NOT_FOUND: u8 = 3;
/// Refused by the server, for good: the token does not grant what the agent asked for
/// (registering, watching), a fixed `--token` (or none) refused at the upgrade (401), the
/// server's certificate rejected. Trying again cannot help: the configuration must change.
pub const REFUSED: u8 = 4;
/// Stopped by an operator: kicked, or (consumer-agent, relay-agent's source) the session
/// ended by one through the operations API.
pub const OPERATOR: u8 = 5;

/// A run that ended with a documented code other than 1.
#[derive(Debug, thiserror::Error)]
pub enum Ending {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Operator(String),
}

impl Ending {
    pub fn code(&self) -> u8 {
        match self {
            Ending::Usage(_) => USAGE,
            Ending::NotFound(_) => NOT_FOUND,
            Ending::Refused(_) => REFUSED,
            Ending::Operator(_) => OPERATOR,
        }
    }
}

/// The exit code of a run that failed with `e`.
pub fn code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Ending>().map_or(FAILURE, Ending::code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_code_is_found_through_context_and_other_errors_are_failures() {
        let refused: anyhow::Result<()> = Err(Ending::Refused("no".into()).into());
        let e = refused.context("registering").unwrap_err();
        assert_eq!(code_of(&e), REFUSED);
        assert_eq!(code_of(&Ending::Operator("kicked".into()).into()), OPERATOR);
        assert_eq!(code_of(&anyhow::anyhow!("pipeline error")), FAILURE);
    }
}

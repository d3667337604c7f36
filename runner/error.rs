//! The crate's error: one variant per room, so callers can match on the room
//! that failed and still print the whole chain.

/// Any taskbox failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading or validating a profile.
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    /// Running a task.
    #[error(transparent)]
    Action(#[from] crate::action::ActionError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The native sandbox.
    #[error(transparent)]
    Native(#[from] crate::sandbox::native::NativeError),
}

//! Writes: paths, operations and preconditions, their wire encoding, and the server's answers.

mod encode;
mod op;
mod path;
mod reply;
mod shortcuts;

pub use encode::EncodedWrite;
pub(crate) use encode::encode;
pub use op::{ClientOpId, Fence, FileContent, WriteOp, WriteRequest};
pub use path::{IntoSegments, Path, PathError};
pub use reply::{Lease, RejectReason, Rejection, WriteAck};
pub(crate) use shortcuts::write_shortcuts;

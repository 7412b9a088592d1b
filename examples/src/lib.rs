//! The logic of the command-line tools of this workspace, kept in a library so that tests can
//! drive it in-process. The runnable programs are in `examples/examples/`.

pub mod dust;
pub mod phx;

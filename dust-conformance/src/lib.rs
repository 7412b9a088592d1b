//! A Phoenix Channels server emulation for tests (work in progress; see the issues).

//! A complete Phoenix Channels client (under construction).

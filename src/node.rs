//! node (stub)

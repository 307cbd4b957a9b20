//! proxy (stub)

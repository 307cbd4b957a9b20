//! admin (stub)

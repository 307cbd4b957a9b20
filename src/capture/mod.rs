//! capture (stub)

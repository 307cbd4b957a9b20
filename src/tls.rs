//! tls (stub)

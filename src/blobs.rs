//! blobs (stub)

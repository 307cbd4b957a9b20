//! Applying entries on a mirror: replaying them on the local CMS, in order, exactly once.

pub mod sessions;

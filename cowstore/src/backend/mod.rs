//! Copy-on-write backends (being written).

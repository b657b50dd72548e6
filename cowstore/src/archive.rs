//! Verification and unpacking of untrusted image files (being written).

//! cowstore: hull's image store. Images are installed from untrusted archives (verified and
//! unpacked by [`archive`]) into a backend ([`backend`]: btrfs subvolumes, xfs reflinks or
//! overlayfs) that clones them for guests in constant time; [`store`] ties the two to the
//! on-disk layout under the data root.
//!
//! This crate takes its own plain config types: it never depends on hull-spec, vmmd or the
//! other subsystems. vmmd converts wire types to these in one place.

pub mod archive;
pub mod backend;
pub mod send;
pub mod store;

//! The switch as one owner (one vmmd's data root) sees it: the [`Switch`] value every
//! operation on that owner's ports, segments and anti-spoofing table goes through, and the
//! life of that table in this process (whether it is loaded, and the lock that orders every
//! change to it against ports being added).
//!
//! The operations themselves live with what they work on (`port.rs`, `segment.rs`,
//! `sweep.rs`, each an `impl Switch`); this module only holds the owner's name and the
//! table's state. It must never touch another owner's table, and nothing may await while
//! holding [`Switch::loaded`]'s guard (a worker thread's runtime has one thread).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::VswitchError;
use crate::guard::{self, Guard};
use crate::netlink::{Ctx, all_links, nf};
use crate::nft;

/// The host's virtual switch for one owner: `owner` names the data root of the vmmd whose
/// ports these are (it goes into every port's alias `hull:<owner>:<uuid>` and names the
/// anti-spoofing table `bridge hull_<owner>`).
///
/// Make one per owner in a process and share it (a clone is the same switch): the value
/// remembers whether it has loaded the owner's anti-spoofing table, and a second value for
/// the same owner would load it afresh under the first one's ports, dropping their entries.
#[derive(Debug, Clone)]
pub struct Switch(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    owner: String,
    /// Whether this process has loaded the owner's anti-spoofing table. Held across every
    /// change to the table's life (load, delete) and every port added, so that a table is
    /// never deleted under a port being added; nothing awaits while holding it.
    loaded: Mutex<bool>,
}

impl Switch {
    /// The switch of `owner`'s ports, with its anti-spoofing table not loaded yet (the first
    /// port added or [`Switch::sweep`] loads it).
    pub fn new(owner: impl Into<String>) -> Switch {
        Switch(Arc::new(Shared {
            owner: owner.into(),
            loaded: Mutex::new(false),
        }))
    }

    /// The owner's tag in port aliases and the anti-spoofing table's name.
    pub fn owner(&self) -> &str {
        &self.0.owner
    }

    /// Whether the owner's table is loaded, locked (see [`Shared::loaded`]).
    pub(crate) fn loaded(&self) -> MutexGuard<'_, bool> {
        // A bool is only ever set: a panic cannot leave it torn.
        self.0.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a port's elements, loading the owner's table first when this process has not
    /// (the first port since vmmd started without running guests, or since the last one
    /// went).
    pub(crate) fn add_guard(
        &self,
        nf: &mut nft::Socket,
        ix: u32,
        g: &Guard,
    ) -> Result<(), nft::NftError> {
        let owner = self.owner();
        let mut loaded = self.loaded();
        if !*loaded {
            guard::install(nf, owner, &[])?;
            *loaded = true;
        }
        match guard::add(nf, owner, ix, g) {
            // The table went behind vmmd's back (nft flush ruleset): load it again.
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                guard::install(nf, owner, &[])?;
                guard::add(nf, owner, ix, g)
            }
            other => other,
        }
    }

    /// Deletes the elements of ports that no longer exist from the owner's anti-spoofing
    /// table, and the table itself when no port is left in it (no rule outlives the last
    /// guest). The links are listed through the host's handle, whatever namespace this
    /// thread is in.
    pub(crate) async fn collect_guards(&self, ctx: &mut Ctx) -> Result<usize, VswitchError> {
        let owner = self.owner();
        let what = "remove the anti-spoofing entries of ports that are gone";
        let snap = guard::snapshot(&mut ctx.nf, owner).map_err(nf(what))?;
        let mut n = 0;
        if snap.iter().any(|(_, e)| !e.is_empty()) {
            let live: BTreeSet<u32> = all_links(&ctx.h)
                .await?
                .iter()
                .map(|m| m.header.index)
                .collect();
            n = guard::delete_stale(&mut ctx.nf, owner, &snap, &live).map_err(nf(what))?;
        }
        let mut loaded = self.loaded();
        if guard::is_unused(&mut ctx.nf, owner).map_err(nf(what))? {
            guard::uninstall(&mut ctx.nf, owner)
                .map_err(nf("remove the unused anti-spoofing table"))?;
            *loaded = false;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_shared_across_threads_and_its_clones_share_the_table_state() {
        fn shared<T: Send + Sync + std::fmt::Debug>() {}
        shared::<Switch>();
        let sw = Switch::new("t");
        assert_eq!(sw.owner(), "t");
        let clone = sw.clone();
        *clone.loaded() = true;
        assert!(*sw.loaded());
        assert!(!*Switch::new("t").loaded());
    }
}

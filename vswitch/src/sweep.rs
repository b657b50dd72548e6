//! Removal by guest and by owner: a guest's ports when it stops or is deleted
//! ([`Switch::remove_ports`], [`Switch::remove_named_ports`]), and at vmmd start every port
//! of the owner's whose guest is not running ([`Switch::sweep`]), with the anti-spoofing
//! entries of ports that are gone. Also the host's link list ([`host_links`]).
//!
//! Ports are found by name prefix and alias (`hull:<owner>:<uuid>`, see the crate doc):
//! this module must never remove a link whose alias names another owner, nor one that is
//! not a port (bridges and uplinks are [`crate::segment`]'s).

use crate::VswitchError;
use crate::guard::{self, Guard};
use crate::names::{HOST_PREFIX, IFB_PREFIX, PEER_PREFIX, TAP_PREFIX, port_key};
use crate::netlink::{all_links, errno_of, index_of, link_alias, link_name, nf, nl, run};
use crate::port::{PortConfig, remove_port_links};
use crate::switch::Switch;

impl Switch {
    /// Deletes the ports of guest `uuid` left in the host's namespace (a zone's own go with its
    /// network namespace), their IFBs, and the anti-spoofing entries of every port of the
    /// owner's that no longer exists; returns the names of the links removed.
    pub fn remove_ports(&self, uuid: &str) -> Result<Vec<String>, VswitchError> {
        let key = port_key(uuid);
        let prefixes: Vec<String> = [HOST_PREFIX, PEER_PREFIX, TAP_PREFIX, IFB_PREFIX]
            .iter()
            .map(|p| format!("{p}{key}"))
            .collect();
        self.remove_where(move |name, _| prefixes.iter().any(|p| name.starts_with(p.as_str())))
    }

    /// Deletes the links of the ports `ports` (a zone's NICs removed while it runs, or what a
    /// failed start made) and their anti-spoofing entries.
    pub fn remove_named_ports(&self, ports: &[PortConfig]) -> Result<(), VswitchError> {
        let (sw, ports) = (self.clone(), ports.to_vec());
        run(move |mut ctx| async move {
            for p in &ports {
                remove_port_links(&ctx.h, p).await?;
            }
            sw.collect_guards(&mut ctx).await.map(|_| ())
        })
    }

    /// At vmmd start: deletes every port of the owner's in the host's namespace whose guest
    /// `keep` does not name (given the guest's uuid), what a vmmd that died mid-setup left,
    /// then loads the owner's anti-spoofing table afresh with the entries of `running` (the
    /// ports of running guests, by link name; those that do not exist are skipped). A veth
    /// pair that never got its alias (a crash between its creation and its attachment) goes
    /// when its guest starts again or is deleted ([`Switch::remove_ports`]). Returns the names
    /// of the links removed.
    pub fn sweep(
        &self,
        keep: impl Fn(&str) -> bool + Send + 'static,
        running: Vec<(String, Guard)>,
    ) -> Result<Vec<String>, VswitchError> {
        let prefix = format!("hull:{}:", self.owner());
        let removed = self.remove_where(move |_, alias| {
            alias
                .and_then(|a| a.strip_prefix(prefix.as_str()))
                .is_some_and(|uuid| !keep(uuid))
        })?;
        let sw = self.clone();
        run(move |mut ctx| async move {
            let owner = sw.owner();
            let mut ports = Vec::new();
            for (name, g) in running {
                if let Some(ix) = index_of(&ctx.h, &name).await? {
                    ports.push((ix, g));
                }
            }
            let mut loaded = sw.loaded();
            if ports.is_empty() {
                // No guest runs: no table until one starts.
                guard::uninstall(&mut ctx.nf, owner)
                    .map_err(nf("remove the unused anti-spoofing table"))?;
                *loaded = false;
                return Ok(());
            }
            guard::install(&mut ctx.nf, owner, &ports).map_err(nf(
                "load the anti-spoofing table (nf_tables, bridge family)",
            ))?;
            *loaded = true;
            Ok(())
        })?;
        Ok(removed)
    }

    /// Deletes the links in the host's namespace that `doomed` names (given name and alias),
    /// then the anti-spoofing entries of ports that are gone.
    fn remove_where(
        &self,
        doomed: impl Fn(&str, Option<&str>) -> bool + Send + 'static,
    ) -> Result<Vec<String>, VswitchError> {
        let sw = self.clone();
        run(move |mut ctx| async move {
            let links = all_links(&ctx.h).await?;
            let mut removed = Vec::new();
            for msg in links {
                let Some(name) = link_name(&msg).map(str::to_string) else {
                    continue;
                };
                if !doomed(&name, link_alias(&msg)) {
                    continue;
                }
                match ctx.h.link().del(msg.header.index).execute().await {
                    Ok(()) => removed.push(name),
                    // Deleting one end of a veth pair deleted the other.
                    Err(e) if errno_of(&e) == Some(libc::ENODEV) => {}
                    Err(e) => return Err(nl(format!("delete {name}"))(e)),
                }
            }
            sw.collect_guards(&mut ctx).await?;
            Ok(removed)
        })
    }
}

/// The names of the links in the host's network namespace (for checks and tests).
pub fn host_links() -> Result<Vec<String>, VswitchError> {
    run(|ctx| async move {
        let links = all_links(&ctx.h).await?;
        Ok(links
            .iter()
            .filter_map(|m| link_name(m).map(str::to_string))
            .collect())
    })
}

//! Nic tags: the named networks guests' NICs attach to, and the bridges behind them.

use std::collections::BTreeMap;
use std::path::Path;

use hull_spec::{NicTag, ValidationReport};

use super::{Result, Service, ServiceError, blocking, catalog, read, switch_error};

impl Service {
    /// The nic tags, by name.
    pub fn nictags(&self) -> Result<BTreeMap<String, NicTag>> {
        Ok(self
            .nictags
            .load()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect())
    }

    /// Adds a nic tag.
    pub async fn add_nictag(&self, tag: NicTag) -> Result<NicTag> {
        let _g = self.config_lock.lock().await;
        let mut report = ValidationReport::default();
        if !hull_spec::validate::is_nic_tag(&tag.name) {
            report.bad_value("name", "a nic tag name is 1-31 letters, digits, _ or -");
        }
        if let Some(up) = &tag.uplink {
            let sane =
                !up.is_empty() && up.len() < 16 && !up.contains('/') && up != "." && up != "..";
            if !sane {
                report.bad_value("uplink", format!("{up:?} is not an interface name"));
            } else if !Path::new("/sys/class/net").join(up).exists() {
                report.bad_value("uplink", format!("the host has no interface {up:?}"));
            }
        }
        if !report.is_empty() {
            return Err(ServiceError::Invalid(report));
        }
        let mut tags = self.nictags()?;
        if tags.contains_key(&tag.name) {
            return Err(ServiceError::Conflict(format!(
                "nic tag {:?} already exists",
                tag.name
            )));
        }
        tags.insert(tag.name.clone(), tag.clone());
        self.save_tags(tags).await?;
        Ok(tag)
    }

    /// Deletes a nic tag that no guest uses.
    pub async fn delete_nictag(&self, name: &str) -> Result<()> {
        let _g = self.config_lock.lock().await;
        let mut tags = self.nictags()?;
        let Some(tag) = tags.remove(name) else {
            return Err(ServiceError::NicTagNotFound(name.to_string()));
        };
        let users: Vec<String> = read(&self.records)
            .vms
            .values()
            .filter(|vm| vm.nics.iter().any(|n| n.nic_tag == name))
            .map(|vm| vm.uuid.to_string())
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "nic tag {name:?} is used by VM {}",
                users.join(", ")
            )));
        }
        // Its bridges and VLAN sub-interfaces go, and its uplink leaves its bridge.
        let switch = self.switch.clone();
        let tag_name = name.to_string();
        blocking(move || {
            switch
                .release_tag(&tag_name, tag.uplink.as_deref())
                .map_err(switch_error)
        })
        .await?;
        self.save_tags(tags).await
    }

    async fn save_tags(&self, tags: BTreeMap<String, NicTag>) -> Result<()> {
        let root = self.data_root.clone();
        let list: Vec<NicTag> = tags.into_values().collect();
        blocking(move || catalog::nictags(&root).save(&list)).await
    }
}

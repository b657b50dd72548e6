//! `vmadm validate create|update`.

use std::path::{Path, PathBuf};

use hull_spec::Brand;

use crate::{CmdResult, Failure, client, read_payload};

pub fn run(
    socket: Option<&Path>,
    action: &str,
    brand: Option<&str>,
    file: Option<&PathBuf>,
) -> CmdResult {
    let c = match (action, brand) {
        ("create", None) => {
            let payload = read_payload(file)?;
            client(socket)?.validate_create(&payload)?
        }
        ("update", Some(b)) => {
            let brand =
                Brand::parse(b).ok_or_else(|| Failure::new(format!("unknown brand {b:?}")))?;
            let payload = read_payload(file)?;
            client(socket)?.validate_update(brand, &payload)?
        }
        ("create", Some(_)) => return Err(Failure::usage("validate create takes no brand")),
        ("update", None) => {
            return Err(Failure::usage(
                "usage: vmadm validate update BRAND [-f FILE]",
            ));
        }
        (other, _) => {
            return Err(Failure::usage(format!(
                "validate takes create or update, not {other:?}"
            )));
        }
    };
    crate::outln!("VALID '{}' payload for {} brand VMs.", c.action, c.brand);
    Ok(())
}

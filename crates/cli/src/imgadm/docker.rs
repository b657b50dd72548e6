//! `imgadm import oci-archive:FILE[:REF]` and `docker-archive:FILE[:REF]`: an OCI image
//! from a local archive (skopeo's spellings), installed as SmartOS's docker images are, one
//! image of type docker per layer (see `hull_spec::docker`), sent to vmmd one layer at a time
//! out of the archive's byte ranges.

use std::path::Path;

use hull_spec::docker;

use super::oci::{self, ArchiveKind};
use super::{installed, with_progress};
use crate::{CmdResult, Failure, client};

/// Imports the image `arg` names (`oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`):
/// the layers not installed yet, base first; then reports the top one as any import.
pub(super) fn import(
    socket: Option<&Path>,
    kind: ArchiveKind,
    file: &Path,
    reference: Option<&str>,
    json: bool,
    quiet: bool,
) -> CmdResult {
    let archived = oci::read_archive(file, kind, reference).map_err(Failure::new)?;
    let image = &archived.image;
    if image.layers.is_empty() {
        return Err(Failure::new(format!(
            "{}: the image has no layers",
            file.display()
        )));
    }
    let c = client(socket)?;
    let uuids = docker::layer_uuids(image);
    let top = uuids.len() - 1;
    for (i, (layer, &offset)) in image.layers.iter().zip(&archived.offsets).enumerate() {
        if i < top && c.get_image(uuids[i]).is_ok() {
            continue;
        }
        let manifest = docker::layer_manifest(image, &uuids, i);
        let what = format!("Importing layer {}/{}", i + 1, image.layers.len());
        let m = with_progress(&what, quiet || json, |progress| {
            c.install_image_part(&manifest, file, offset, Some(layer.size), progress)
        });
        if i == top {
            return installed(&c, m, Some(uuids[i]), json);
        }
        match m {
            Ok(_) => {}
            // Installed by someone else meanwhile: as good.
            Err(e) if e.api_body().is_some_and(|b| b.code == "AlreadyInState") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

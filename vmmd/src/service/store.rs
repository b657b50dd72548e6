//! The durable guest records: one JSON file per guest under `<data root>/vms/`.
//!
//! Every write is crash-safe: the new bytes go to a temp file in the same directory, which is
//! fsynced, renamed over the record, and the directory fsynced. A crash at any point leaves
//! either the old record or the new one, never a torn file. Temp files left by a crash are
//! removed on open. This module never decides what a record should hold; the service does.

use std::fs;
use std::path::{Path, PathBuf};

use hull_spec::Vm;
use hull_sys::IoError;
use hull_sys::fs::{WriteOptions, sync_dir, write_atomic_with};
use uuid::Uuid;

/// Failures of the record store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A record could not be encoded.
    #[error("cannot encode the record of VM {uuid}")]
    Encode {
        /// The guest.
        uuid: Uuid,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io(IoError::new(action, path, source))
}

/// vmmd's files hold guests' configuration: readable by root only, like their directories.
const PRIVATE: WriteOptions = WriteOptions::DURABLE.mode(0o600);

/// Writes `bytes` to `dir/name` so that a crash leaves the old or the new content whole
/// (mode 0600; temp files a crash leaves, `.<name>.tmp-*`, are [`Store::open`]'s to remove).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_with(&dir.join(name), bytes, PRIVATE)?;
    Ok(())
}

/// Removes `dir/name` durably; a missing file is not an error.
pub fn remove_durable(dir: &Path, name: &str) -> Result<(), StoreError> {
    let target = dir.join(name);
    match fs::remove_file(&target) {
        Ok(()) => Ok(sync_dir(dir)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &target)(e)),
    }
}

/// Creates `dir` (and parents) with mode 0700 when absent.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create directory", dir))
}

/// The guest record directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// What opening the store found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records that parsed.
    pub vms: Vec<Vm>,
    /// Files that were not valid records; moved aside into `vms/corrupt/`.
    pub quarantined: Vec<PathBuf>,
    /// Temp files a crash left behind, removed.
    pub removed_temps: usize,
}

impl Store {
    /// Opens (creating if needed) `<data_root>/vms`, removes crash leftovers and loads every
    /// record. A file that is not a valid record is moved aside, never deleted.
    pub fn open(data_root: &Path) -> Result<(Store, Loaded), StoreError> {
        let dir = data_root.join("vms");
        ensure_private_dir(&dir)?;
        let mut loaded = Loaded::default();
        for entry in fs::read_dir(&dir).map_err(io("read directory", &dir))? {
            let entry = entry.map_err(io("read directory", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                fs::remove_file(&path).map_err(io("remove", &path))?;
                loaded.removed_temps += 1;
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let parsed = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Vm>(&b).ok())
                .filter(|vm| vm.uuid.to_string() == stem);
            match parsed {
                Some(vm) => loaded.vms.push(vm),
                None => {
                    let aside = dir.join("corrupt");
                    ensure_private_dir(&aside)?;
                    let dest = aside.join(&name);
                    fs::rename(&path, &dest).map_err(io("move aside", &path))?;
                    loaded.quarantined.push(dest);
                }
            }
        }
        if loaded.removed_temps > 0 || !loaded.quarantined.is_empty() {
            sync_dir(&dir)?;
        }
        Ok((Store { dir }, loaded))
    }

    /// Writes a guest's record durably.
    pub fn put(&self, vm: &Vm) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(vm).map_err(|source| StoreError::Encode {
            uuid: vm.uuid,
            source,
        })?;
        write_atomic(&self.dir, &format!("{}.json", vm.uuid), &bytes)
    }

    /// Stores a guest's record after a run-state change (start, stop, a zone's own exit):
    /// atomically, but without the fsyncs. Run state is re-derived from the zones' zoned
    /// processes when vmmd starts, so a transition a host crash loses is corrected then;
    /// everything else a record holds is stored with `put`.
    pub fn put_run_state(&self, vm: &Vm) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(vm).map_err(|source| StoreError::Encode {
            uuid: vm.uuid,
            source,
        })?;
        let path = self.dir.join(format!("{}.json", vm.uuid));
        write_atomic_with(&path, &bytes, WriteOptions::RUNTIME.mode(0o600))?;
        Ok(())
    }

    /// Removes a guest's record durably.
    pub fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        remove_durable(&self.dir, &format!("{uuid}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uuid: Uuid) -> Vm {
        let create = hull_spec::validate_create(&serde_json::json!({
            "brand": "kvm", "uuid": uuid.to_string(), "autoboot": false
        }))
        .expect("valid");
        use crate::service::convert::{Context, MacPool, new_record};
        new_record(create, &Context::fixed(), &mut MacPool::new(&|_| false)).expect("converts")
    }

    #[test]
    fn put_load_remove_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, loaded) = Store::open(tmp.path()).expect("open");
        assert!(loaded.vms.is_empty());
        let vm = sample(Uuid::new_v4());
        store.put(&vm).expect("put");
        let (_, loaded) = Store::open(tmp.path()).expect("reopen");
        assert_eq!(loaded.vms, vec![vm.clone()]);
        store.remove(vm.uuid).expect("remove");
        store.remove(vm.uuid).expect("remove twice is fine");
        assert!(Store::open(tmp.path()).expect("reopen").1.vms.is_empty());
    }

    #[test]
    fn crash_leftovers_are_cleaned_and_bad_files_quarantined() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vms");
        fs::create_dir_all(&dir).expect("mkdir");
        let vm = sample(Uuid::new_v4());
        let name = format!("{}.json", vm.uuid);
        fs::write(dir.join(format!(".{name}.tmp-abc")), b"{\"half").expect("write");
        let torn = Uuid::new_v4();
        fs::write(dir.join(format!("{torn}.json")), b"{\"uuid\": ").expect("write");
        // A valid record under the wrong name is not trusted either.
        fs::write(
            dir.join(format!("{}.json", Uuid::new_v4())),
            serde_json::to_vec(&vm).expect("json"),
        )
        .expect("write");
        let (_, loaded) = Store::open(tmp.path()).expect("open");
        assert_eq!(loaded.removed_temps, 1);
        assert_eq!(loaded.quarantined.len(), 2);
        assert!(loaded.vms.is_empty());
        assert!(dir.join("corrupt").join(format!("{torn}.json")).exists());
    }
}

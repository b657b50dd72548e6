//! The `vmmd` binary: flags, logging, the data-root lock, then the API until SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use vmmd::api::{self, Access};
use vmmd::service::Service;
use vmmd::service::paths::HostPathPolicy;

/// hull's daemon: guests (zones and microVMs) behind one JSON API on a Unix socket.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The API socket.
    #[arg(long, default_value = "/run/hull/vmmd.sock", env = "HULL_SOCKET")]
    socket: PathBuf,
    /// Where images, guests and state live.
    #[arg(long, default_value = "/var/lib/hull")]
    data_root: PathBuf,
    /// The image store backend: btrfs, reflink or overlay (default: detected from the data
    /// root's filesystem).
    #[arg(long)]
    storage_backend: Option<String>,
    /// Also let members of this group (name or gid) use the socket. Members may do what
    /// root may, except name host files (a microVM's kernel, initrd, disks[].path) outside
    /// the --allow-path directories.
    #[arg(long)]
    group: Option<String>,
    /// A directory below which group members may name host files for microVMs (kernel,
    /// initrd, disks[].path); repeatable, default none (only root names host files). It and
    /// every directory above it must be writable by root only: vmmd checks a file when the
    /// payload arrives and uses it later, at each start.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
    /// The zone runtime binary (default: `zoned` next to vmmd).
    #[arg(long)]
    zoned: Option<PathBuf>,
    /// The VMM binary microVMs run (default: `vmm` next to vmmd).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The statically linked mdata tool bound into every zone as /usr/sbin/mdata-get and
    /// its siblings (default: `mdata` next to vmmd; scripts/build-mdata builds it).
    #[arg(long)]
    mdata_tools: Option<PathBuf>,
    /// The site's name, which guests read as `sdc:datacenter_name`.
    #[arg(long)]
    datacenter_name: Option<String>,
    /// How zone roots show the zone's ids: idmap (id-mapped mounts), shift (files chowned
    /// into the zone's range once), or auto (idmap where the kernel has it, else shift).
    #[arg(long, default_value = "auto")]
    zone_root_ids: zoned::config::RootIds,
    /// The most file data one image, layer or received tree may unpack to, in MiB: a larger
    /// one (a decompression bomb) is refused while it streams, and nothing of it is kept.
    #[arg(long, default_value_t = 64 << 10, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    max_unpacked_mib: u64,
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(name)
        .with_context(|| format!("cannot look up group {name:?}"))?
        .map(|g| g.gid.as_raw())
        .with_context(|| format!("there is no group {name:?}"))
}

/// A file in /run/hull (a tmpfs, empty after every boot) naming this data root.
fn first_start_marker(data_root: &std::path::Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_root.hash(&mut h);
    let dir = PathBuf::from("/run/hull");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("booted-{:016x}", h.finish()))
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.openapi {
        println!(
            "{}",
            serde_json::to_string_pretty(&api::openapi::document())?
        );
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let group = args.group.as_deref().map(group_id).transpose()?;
    let backend_kind = match args.storage_backend.as_deref() {
        None => None,
        Some(name) => Some(
            hull_cowstore::backend::BackendKind::parse(name).with_context(|| {
                format!("unknown storage backend {name:?}; use btrfs, reflink or overlay")
            })?,
        ),
    };
    std::fs::create_dir_all(&args.data_root)
        .with_context(|| format!("cannot create the data root {}", args.data_root.display()))?;
    // zoned runs from / and is handed paths in the data root: make them absolute.
    args.data_root = std::fs::canonicalize(&args.data_root)
        .with_context(|| format!("cannot resolve the data root {}", args.data_root.display()))?;
    let daemon_uid = nix::unistd::geteuid().as_raw();
    // Checked before anything is served, so a directory others can write never counts.
    let host_paths = Arc::new(HostPathPolicy::new(
        &args.allow_path,
        &[0, daemon_uid],
        &args.data_root,
    )?);
    let lock_path = args.data_root.join("vmmd.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .with_context(|| {
            format!(
                "another vmmd holds the data root {} (lock {})",
                args.data_root.display(),
                lock_path.display()
            )
        })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let cow = hull_cowstore::store::Store::open(hull_cowstore::store::StoreConfig {
            root: args.data_root.clone(),
            backend: backend_kind,
            limits: hull_cowstore::archive::Limits {
                max_unpacked_bytes: args.max_unpacked_mib << 20,
                ..hull_cowstore::archive::Limits::default()
            },
        })
        .with_context(|| format!("cannot open the image store in {}", args.data_root.display()))?;
        tracing::info!(backend = cow.backend().as_str(), "image store opened");
        let zoned = match args.zoned.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .context("cannot find vmmd's own path")?
                .with_file_name("zoned"),
        };
        let vmm = match args.vmm.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .context("cannot find vmmd's own path")?
                .with_file_name("vmm"),
        };
        let mdata = match args.mdata_tools.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .context("cannot find vmmd's own path")?
                .with_file_name("mdata"),
        };
        let mdata = match vmmd::service::zones::kit::mdata_tools(&mdata) {
            Ok(p) => Some(p),
            Err(why) => {
                tracing::warn!("zones get no mdata tools: {why}");
                None
            }
        };
        let runtimes = vmmd::service::Runtimes { zoned, vmm, mdata };
        let (service, loaded) = Service::open(&args.data_root, cow, runtimes, args.zone_root_ids)
            .with_context(|| format!("cannot open the data root {}", args.data_root.display()))?;
        for uuid in service.remove_orphan_storage().await? {
            tracing::warn!(%uuid, "removed the storage of a guest whose create never finished");
        }
        for uuid in service.undo_interrupted_changes().await? {
            tracing::warn!(%uuid, "rolled back a guest whose incremental receive never finished");
        }
        for path in &loaded.quarantined {
            tracing::error!(path = %path.display(), "a guest record was unreadable and was moved aside");
        }
        tracing::info!(
            guests = service.list(&[]).len(),
            removed_temps = loaded.removed_temps,
            data_root = %args.data_root.display(),
            "state loaded"
        );
        let (kept, lost) = service.reattach().await;
        if kept + lost > 0 {
            tracing::info!(kept, lost, "zones found running at start: kept ones still running, marked the others stopped");
        }
        match service.sweep_ports().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(?removed, "removed switch ports of guests that are not running");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot sweep switch ports: {}", hull_sys::chain(&e)),
        }
        service.prepare_zones();
        let service = Arc::new(service);
        tokio::spawn(service.clone().reaper());
        let host = vmmd::metadata::HostFacts {
            server_uuid: vmmd::metadata::server_uuid(),
            datacenter_name: args.datacenter_name.clone(),
        };
        let agent = vmmd::metadata::Agent::new(service.clone(), host);
        tokio::spawn(agent.clone().run());
        let listener = api::bind(&args.socket, group)?;
        tracing::info!(socket = %args.socket.display(), "serving the API");
        let allow_paths: Vec<_> = host_paths.dirs().map(|d| d.display().to_string()).collect();
        if !allow_paths.is_empty() {
            tracing::info!(?allow_paths, "group members may name host files below these directories");
        }
        let access = Access { daemon_uid, group, host_paths };
        // Autoboot is for the host's boot: a vmmd restart must not start guests the
        // operator stopped. A marker in /run (cleared at every boot) tells the two apart.
        let marker = first_start_marker(&args.data_root);
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_ok() {
            let boot = service.clone();
            tokio::spawn(async move {
                for (uuid, err) in boot.autoboot().await {
                    tracing::warn!(%uuid, error = %hull_sys::chain(&err), "autoboot failed");
                }
            });
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail at startup");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        api::serve(listener, service, access, shutdown).await;
        // A guest's request under way is answered before vmmd goes; new ones wait in the
        // zones' backlogs for the next vmmd.
        agent.drain(std::time::Duration::from_secs(5)).await;
        let _ = std::fs::remove_file(&args.socket);
        tracing::info!("stopped");
        Ok(())
    })
}

//! `imgadm`: SmartOS's image tool. Reading the installed images works now; the verbs that
//! change the store need cowstore and say so.

use std::path::PathBuf;

mod docker;
mod oci;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::table::{fields, render, sort};
use hull_spec::api::codes;

use crate::{CmdResult, Failure, client, parse_uuid};

/// Manage hull's images the way SmartOS's imgadm does.
#[derive(Debug, Parser)]
#[command(name = "imgadm", version)]
pub struct Cli {
    #[command(flatten)]
    daemon: crate::Daemon,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List installed images.
    List {
        /// JSON output.
        #[arg(short = 'j')]
        json: bool,
        /// No header.
        #[arg(short = 'H')]
        no_header: bool,
        /// Columns.
        #[arg(short = 'o')]
        fields: Option<String>,
        /// Sort fields.
        #[arg(short = 's', allow_hyphen_values = true)]
        sort: Option<String>,
        /// Filters: FIELD=VALUE or FIELD=~SUBSTRING.
        filters: Vec<String>,
    },
    /// Print an installed image's manifest.
    Get {
        /// The image.
        uuid: String,
    },
    /// Print an image's manifest (installed images).
    Show {
        /// The image.
        uuid: String,
    },
    /// Install an image from a manifest and a file.
    Install {
        /// The manifest.
        #[arg(short = 'm')]
        manifest: PathBuf,
        /// The image file.
        #[arg(short = 'f')]
        file: PathBuf,
        /// Print the installed manifest as JSON.
        #[arg(short = 'j')]
        json: bool,
        /// No progress bar.
        #[arg(short = 'q')]
        quiet: bool,
    },
    /// Import an image from the configured sources, or a docker image from an archive
    /// (skopeo's spellings: oci-archive:FILE[:REF], docker-archive:FILE[:REF]).
    Import {
        /// The image's uuid, or oci-archive:FILE[:REF] or docker-archive:FILE[:REF].
        uuid: String,
        /// Import from this source URL only.
        #[arg(short = 'S')]
        source: Option<String>,
        /// Print the installed manifest as JSON.
        #[arg(short = 'j')]
        json: bool,
        /// No progress bar.
        #[arg(short = 'q')]
        quiet: bool,
    },
    /// Manage image sources.
    Sources {
        /// Add a source (http:// or https://).
        #[arg(short = 'a')]
        add: Option<String>,
        /// Delete a source.
        #[arg(short = 'd')]
        delete: Option<String>,
        /// With -a: a PEM file of the private CA the https source's certificate chains to.
        #[arg(long = "ca-cert", requires = "add")]
        ca_cert: Option<PathBuf>,
        /// With -a: do not check the https source's certificate at all.
        #[arg(short = 'k', long = "insecure", requires = "add")]
        insecure: bool,
        /// With -a: the source's type, imgapi (SmartOS's image API) or docker (a registry).
        #[arg(short = 't', long = "type", default_value = "imgapi", requires = "add")]
        kind: String,
        /// With -a -t docker: the registry user; the password is read from
        /// --password-file, or from stdin (never from the command line).
        #[arg(long = "user", requires = "add")]
        user: Option<String>,
        /// With --user: a file holding the password (its first line).
        #[arg(long = "password-file", requires = "user")]
        password_file: Option<PathBuf>,
    },
    /// List images available from the sources.
    Avail {
        /// JSON output.
        #[arg(short = 'j')]
        json: bool,
        /// No header.
        #[arg(short = 'H')]
        no_header: bool,
        /// Columns.
        #[arg(short = 'o')]
        fields: Option<String>,
    },
    /// Delete an installed image.
    Delete {
        /// The image.
        uuid: String,
    },
    /// Delete images no guest uses.
    Vacuum {
        /// Do not ask.
        #[arg(short = 'f')]
        force: bool,
    },
    /// Create an image from a stopped zone: writes NAME-VERSION.json (manifest) and the
    /// archive into the output directory, ready for `imgadm install`.
    Create {
        /// Output directory.
        #[arg(short = 'o', default_value = ".")]
        output: PathBuf,
        /// Compression: gzip, xz, zstd, bzip2 or none.
        #[arg(short = 'c', default_value = "gzip")]
        compression: String,
        /// The stopped zone.
        uuid: String,
        /// Manifest fields: name=NAME version=VERSION [description=TEXT].
        fields: Vec<String>,
        /// No progress bar.
        #[arg(short = 'q')]
        quiet: bool,
    },
}

fn create(
    socket: Option<&std::path::Path>,
    output: &std::path::Path,
    compression: &str,
    uuid: &str,
    fields: &[String],
    quiet: bool,
) -> CmdResult {
    use std::io::Write;
    let uuid = parse_uuid(uuid)?;
    let mut given = serde_json::Map::new();
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .filter(|(k, _)| ["name", "version", "description"].contains(k))
            .ok_or_else(|| {
                Failure::usage(format!("{f:?}: give name=, version= or description="))
            })?;
        given.insert(k.to_string(), Value::String(v.to_string()));
    }
    let (Some(name), Some(version)) = (
        given.get("name").and_then(Value::as_str),
        given.get("version").and_then(Value::as_str),
    ) else {
        return Err(Failure::usage(
            "imgadm create needs name=NAME and version=VERSION",
        ));
    };
    let ext = match compression {
        "gzip" => "tar.gz",
        "xz" => "tar.xz",
        "zstd" => "tar.zst",
        "bzip2" => "tar.bz2",
        "none" => "tar",
        other => {
            return Err(Failure::usage(format!(
                "compression {other:?}: use gzip, xz, zstd, bzip2 or none"
            )));
        }
    };
    let c = client(socket)?;
    let vm = c.get_vm(uuid)?;
    let origin = vm
        .image_uuid
        .ok_or_else(|| Failure::new(format!("VM {uuid} has no image root to make an image of")))?;
    let source = c.get_image(origin)?;
    std::fs::create_dir_all(output)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", output.display())))?;
    let stem = format!("{name}-{version}");
    let file = output.join(format!("{stem}.{ext}"));
    let partial = output.join(format!(".{stem}.{ext}.partial"));
    // The archive's size is known only at its end: the bar counts bytes and their rate.
    let bar = progress_bar("Creating", quiet, false);
    let result = (|| {
        let f = std::fs::File::create(&partial)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", partial.display())))?;
        let mut hashed = HashingWriter {
            inner: std::io::BufWriter::new(f),
            sha1: Sha1Sum::default(),
            size: 0,
            bar: bar.as_ref(),
        };
        c.export_root(uuid, compression, &mut hashed)?;
        hashed
            .inner
            .flush()
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", partial.display())))?;
        Ok::<_, Failure>(hashed.finish())
    })();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let (sha1, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &file)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", file.display())))?;
    let image_type = if vm.brand == hull_spec::Brand::Lx {
        "lx-dataset"
    } else {
        source.image_type.as_str()
    };
    let mut manifest = serde_json::json!({
        "v": 2, "uuid": uuid::Uuid::new_v4(), "name": name, "version": version,
        "type": image_type, "os": source.os, "origin": origin,
        "requirements": {"brand": vm.brand.as_str()},
        "files": [{"sha1": sha1, "size": size, "compression": compression}]
    });
    if let Some(d) = given.get("description") {
        manifest["description"] = d.clone();
    }
    let mpath = output.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Failure::new(e.to_string()))?;
    std::fs::write(&mpath, text + "\n")
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", mpath.display())))?;
    eprintln!(
        "Created image {} ({name}@{version}): {} and {}",
        manifest["uuid"].as_str().unwrap_or_default(),
        mpath.display(),
        file.display()
    );
    Ok(())
}

/// SHA-1 of what passes through, for the manifest of a created image.
#[derive(Default)]
struct Sha1Sum(sha1::Sha1);

struct HashingWriter<'a, W: std::io::Write> {
    inner: W,
    sha1: Sha1Sum,
    size: u64,
    bar: Option<&'a indicatif::ProgressBar>,
}

impl<W: std::io::Write> HashingWriter<'_, W> {
    fn finish(self) -> (String, u64) {
        (
            format!("{:x}", sha1::Digest::finalize(self.sha1.0)),
            self.size,
        )
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha1::Digest::update(&mut self.sha1.0, &buf[..n]);
        self.size += n as u64;
        if let Some(b) = self.bar {
            b.set_position(self.size);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Prints manifests as JSON or as a table (SmartOS's default columns).
fn print_images(rows: &[Value], json: bool, no_header: bool, cols: Option<&str>) -> CmdResult {
    if json {
        let text = serde_json::to_string_pretty(rows).map_err(|e| Failure::new(e.to_string()))?;
        crate::outln!("{text}");
    } else {
        let cols = fields(cols.unwrap_or("uuid,name,version,os,type,published_at"))
            .map_err(Failure::usage)?;
        crate::out!("{}", render(rows, &cols, !no_header, false));
    }
    Ok(())
}

/// Runs `f` with a progress callback that drives a bar (see [`progress_bar`]).
fn with_progress<T>(what: &str, quiet: bool, f: impl FnOnce(&mut dyn FnMut(u64, u64)) -> T) -> T {
    let bar = progress_bar(what, quiet, true);
    let out = f(&mut |sent, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(sent);
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    out
}

/// A progress bar on stderr when stdout is a terminal and the output is for people; without
/// a known total (`sized` false) it counts bytes behind a spinner.
fn progress_bar(what: &str, quiet: bool, sized: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!quiet && std::io::stdout().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        let template = if sized {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {bytes_per_sec}"
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(what.to_string());
        b.tick();
        b
    })
}

fn report_installed(m: &hull_spec::ImageManifest, json: bool) -> CmdResult {
    if json {
        let text = serde_json::to_string_pretty(m).map_err(|e| Failure::new(e.to_string()))?;
        crate::outln!("{text}");
    } else {
        eprintln!("Installed image {} ({}@{})", m.uuid, m.name, m.version);
    }
    Ok(())
}

/// What an install or import ended in: the image installed, or (vmmd's `AlreadyInState`) an
/// image that was there already, which is no failure (SmartOS's imgadm says so and exits
/// 0): it is reported from what is installed when its uuid is known (`-j` prints its
/// manifest), else in vmmd's words.
fn installed(
    c: &hull_client::Client,
    r: Result<hull_spec::ImageManifest, hull_client::ClientError>,
    uuid: Option<uuid::Uuid>,
    json: bool,
) -> CmdResult {
    match r {
        Ok(m) => report_installed(&m, json),
        Err(e) if e.api_body().is_some_and(|b| b.code == codes::ALREADY) => {
            match uuid.or_else(|| {
                // A docker import names its image only in vmmd's answer ("image UUID (...) is
                // already installed").
                e.api_body().and_then(|b| {
                    b.message
                        .split_whitespace()
                        .find_map(|w| uuid::Uuid::parse_str(w).ok())
                })
            }) {
                Some(uuid) => {
                    let m = c.get_image(uuid)?;
                    if json {
                        return report_installed(&m, true);
                    }
                    eprintln!(
                        "Image {} ({}@{}) is already installed",
                        m.uuid, m.name, m.version
                    );
                    Ok(())
                }
                None => {
                    eprintln!("{e}");
                    Ok(())
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn install(
    socket: Option<&std::path::Path>,
    manifest: &std::path::Path,
    file: &std::path::Path,
    json: bool,
    quiet: bool,
) -> CmdResult {
    let (m_text, f_text) = (manifest.to_string_lossy(), file.to_string_lossy());
    let is_url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
    if is_url(&m_text) || is_url(&f_text) {
        // From a file server: vmmd downloads both, verified as any install.
        let c = client(socket)?;
        let m = with_progress("Importing", quiet || json, |progress| {
            c.import_urls(&m_text, &f_text, progress)
        });
        return installed(&c, m, None, json);
    }
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", manifest.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::new(format!("{} is not valid JSON: {e}", manifest.display())))?;
    let c = client(socket)?;
    let m = with_progress("Installing", quiet || json, |progress| {
        c.install_image(&value, file, progress)
    });
    let uuid = value["uuid"].as_str().and_then(|u| u.parse().ok());
    installed(&c, m, uuid, json)
}

fn filter_matches(row: &Value, f: &str) -> Result<bool, Failure> {
    let (k, v) = f
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Failure::usage(format!("{f:?} is not FIELD=VALUE or FIELD=~SUBSTRING")))?;
    let cell = crate::table::cell(row, k);
    Ok(match v.strip_prefix('~') {
        Some(sub) => cell.contains(sub),
        None => cell == v,
    })
}

/// Runs imgadm.
pub fn run(cli: Cli) -> CmdResult {
    let socket = cli.daemon.socket.as_deref();
    match cli.command {
        Command::List {
            json,
            no_header,
            fields: cols,
            sort: by,
            filters,
        } => {
            let images = client(socket)?.list_images()?;
            let mut rows = Vec::new();
            for m in images {
                let row = serde_json::to_value(&m).map_err(|e| Failure::new(e.to_string()))?;
                let mut keep = true;
                for f in &filters {
                    keep &= filter_matches(&row, f)?;
                }
                if keep {
                    rows.push(row);
                }
            }
            let by =
                fields(by.as_deref().unwrap_or("published_at,name")).map_err(Failure::usage)?;
            sort(&mut rows, &by);
            print_images(&rows, json, no_header, cols.as_deref())
        }
        Command::Get { uuid } | Command::Show { uuid } => {
            let uuid = parse_uuid(&uuid)?;
            match client(socket)?.get_image(uuid) {
                Ok(m) => {
                    let text = serde_json::to_string_pretty(&m)
                        .map_err(|e| Failure::new(e.to_string()))?;
                    crate::outln!("{text}");
                    Ok(())
                }
                Err(e) if e.api_body().is_some_and(|b| b.code == "NotFound") => Err(Failure {
                    code: 3,
                    ..Failure::from(e)
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::Install {
            manifest,
            file,
            json,
            quiet,
        } => install(socket, &manifest, &file, json, quiet),
        Command::Import {
            uuid,
            source,
            json,
            quiet,
        } => {
            if let Some(archive) = oci::parse_transport(&uuid) {
                let (kind, file, reference) = archive.map_err(Failure::usage)?;
                if source.is_some() {
                    return Err(Failure::usage("-S names a source; an archive is its own"));
                }
                return docker::import(socket, kind, &file, reference.as_deref(), json, quiet);
            }
            if uuid::Uuid::parse_str(&uuid).is_err() {
                // Not a uuid: a docker image reference, from the docker sources.
                let c = client(socket)?;
                let m = with_progress("Importing", quiet || json, |progress| {
                    c.import_docker(&uuid, source.as_deref(), progress)
                });
                return installed(&c, m, None, json);
            }
            let uuid = parse_uuid(&uuid)?;
            let c = client(socket)?;
            let m = with_progress("Importing", quiet || json, |progress| {
                c.import_image(uuid, source.as_deref(), progress)
            });
            match m {
                // No source has it: exit 3, as for an image that is not installed.
                Err(e) if e.api_body().is_some_and(|b| b.code == codes::NOT_FOUND) => {
                    Err(Failure {
                        code: 3,
                        ..Failure::from(e)
                    })
                }
                m => installed(&c, m, Some(uuid), json),
            }
        }
        Command::Sources {
            add,
            delete,
            ca_cert,
            insecure,
            kind,
            user,
            password_file,
        } => {
            let c = client(socket)?;
            match (add, delete) {
                (Some(url), None) => {
                    let ca_cert = match ca_cert {
                        Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                            Failure::new(format!("cannot read {}: {e}", p.display()))
                        })?),
                        None => None,
                    };
                    let password = match (&user, password_file) {
                        (None, _) => None,
                        (Some(_), Some(p)) => Some(
                            std::fs::read_to_string(&p)
                                .map_err(|e| {
                                    Failure::new(format!("cannot read {}: {e}", p.display()))
                                })?
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .to_string(),
                        ),
                        (Some(u), None) => {
                            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                                eprint!("Password for {u}: ");
                            }
                            let mut line = String::new();
                            std::io::stdin().read_line(&mut line).map_err(|e| {
                                Failure::new(format!("cannot read the password: {e}"))
                            })?;
                            Some(line.trim_end_matches(['\r', '\n']).to_string())
                        }
                    };
                    c.add_source_with(&hull_spec::api::ImageSource {
                        url: url.clone(),
                        kind,
                        ca_cert,
                        insecure,
                        username: user,
                        password,
                    })?;
                    eprintln!("Added image source {url}");
                }
                (None, Some(url)) => {
                    c.delete_source(&url)?;
                    eprintln!("Deleted image source {url}");
                }
                (None, None) => {
                    for s in c.sources()? {
                        crate::outln!("{}", s.url);
                    }
                }
                (Some(_), Some(_)) => return Err(Failure::usage("give -a or -d, not both")),
            }
            Ok(())
        }
        Command::Avail {
            json,
            no_header,
            fields: cols,
        } => {
            let rows: Vec<Value> = client(socket)?
                .available_images()?
                .iter()
                .filter_map(|m| serde_json::to_value(m).ok())
                .collect();
            print_images(&rows, json, no_header, cols.as_deref())
        }
        Command::Delete { uuid } => {
            let uuid = parse_uuid(&uuid)?;
            match client(socket)?.delete_image(uuid) {
                Ok(()) => {
                    eprintln!("Deleted image {uuid}");
                    Ok(())
                }
                Err(e) if e.api_body().is_some_and(|b| b.code == "NotFound") => Err(Failure {
                    code: 3,
                    ..Failure::from(e)
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::Vacuum { force } => {
            if !force {
                return Err(Failure::usage(
                    "vacuum deletes every image no guest uses; confirm with -f",
                ));
            }
            let removed = client(socket)?.vacuum_images()?;
            for u in &removed {
                crate::outln!("Deleted image {u}");
            }
            if removed.is_empty() {
                eprintln!("No unused images");
            }
            Ok(())
        }
        Command::Create {
            output,
            compression,
            uuid,
            fields,
            quiet,
        } => create(socket, &output, &compression, &uuid, &fields, quiet),
    }
}

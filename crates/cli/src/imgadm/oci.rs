//! Reading an OCI image out of a local archive file: skopeo's `oci-archive:` and
//! `docker-archive:` transports.
//!
//! Both formats are plain (uncompressed) tar files. The archive is scanned once for its member
//! list (the tar headers only: member data is seeked over), then the few JSON documents are
//! read by position and checked against their digests. Nothing is unpacked: each layer is
//! returned as a byte range of the archive file, to be streamed from there by the importer.
//!
//! The archive is hostile input: every size is bounded, every digest checked, every member a
//! blob is read from must be a plain regular file (no links, no sparse files), and every
//! refusal names the archive, the member and the problem.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hull_spec::docker::{
    self as docker, CONTAINERD_NAME, DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, Descriptor,
    DockerImage, Index, MAX_JSON, Manifest, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, REF_NAME,
    digest_hex, hex, is_hex64, layer_compression, platforms, sha256, short,
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The most layers an image may have.
const MAX_LAYERS: usize = 200;
/// The most members an archive may have.
const MAX_MEMBERS: usize = 4096;
/// The longest member name, in bytes.
const MAX_NAME: usize = 4096;
/// How deep image indexes may nest below index.json.
const MAX_DEPTH: usize = 4;
/// How many bytes the member scan may read (headers, long names, pax records): a bound on
/// what a hostile archive can make the tar reader hold in memory.
const MAX_HEADER_BYTES: u64 = 64 << 20;
/// The buffer size used to hash a docker-archive layer.
const HASH_CHUNK: usize = 1 << 20;

/// Which archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI image layout in a tar file (`oci-archive:`).
    Oci,
    /// The format of `docker save` (`docker-archive:`): manifest.json, configs and layer tars.
    Docker,
}

impl ArchiveKind {
    /// The transport's name, as in `oci-archive:FILE`.
    fn transport(self) -> &'static str {
        match self {
            ArchiveKind::Oci => "oci-archive",
            ArchiveKind::Docker => "docker-archive",
        }
    }
}

/// An image read from an archive, and where each layer's stored bytes start in the archive
/// file (base first; each layer's `size` bytes from there).
///
/// The image's `repo` is the repository the archive names it by, without the tag, as written
/// ("docker.io/library/busybox" or "busybox"), None when the archive does not say: for
/// oci-archive the index entry's "io.containerd.image.name" annotation, or
/// "org.opencontainers.image.ref.name" when that holds a full reference (skopeo writes only
/// the tag there); for docker-archive the RepoTags entry the reference matched, else
/// RepoTags[0]. Its `manifest_digest` is that of the manifest bytes (oci-archive);
/// docker-archive has no manifest blob, so it is the config digest there. The config's
/// digest is verified against the bytes read; its os is linux, its architecture amd64, and
/// its rootfs.diff_ids has one entry per layer. A layer's `digest` is the descriptor's for
/// oci-archive (checked when the layer is streamed), computed from the member for
/// docker-archive; its compression comes from the media type (oci-archive) or is sniffed
/// from the member's first bytes (docker-archive has no media types).
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// The image, as hull_spec's docker module takes it.
    pub image: DockerImage,
    /// Where each layer's stored bytes start in the archive file, base first.
    pub offsets: Vec<u64>,
}

/// Splits "oci-archive:FILE[:REF]" / "docker-archive:FILE[:REF]" into (kind, file, reference);
/// None when `arg` starts with neither prefix. The FILE part ends at the first ':' after the
/// prefix (a path with ':' cannot be given, as in skopeo), so REF may hold ':' itself
/// ("docker-archive:x.tar:busybox:latest"). An empty FILE or an empty REF after a ':' is an
/// Err.
#[allow(clippy::type_complexity)] // the signature the importer was written against
pub fn parse_transport(
    arg: &str,
) -> Option<Result<(ArchiveKind, PathBuf, Option<String>), String>> {
    let (kind, rest) = if let Some(rest) = arg.strip_prefix("oci-archive:") {
        (ArchiveKind::Oci, rest)
    } else if let Some(rest) = arg.strip_prefix("docker-archive:") {
        (ArchiveKind::Docker, rest)
    } else {
        return None;
    };
    let (file, reference) = match rest.split_once(':') {
        Some((file, reference)) => (file, Some(reference)),
        None => (rest, None),
    };
    let transport = kind.transport();
    if file.is_empty() {
        return Some(Err(format!(
            "{arg}: no archive file given (the form is {transport}:FILE[:REF])"
        )));
    }
    if reference == Some("") {
        return Some(Err(format!(
            "{arg}: empty image reference after the file name (the form is {transport}:FILE[:REF])"
        )));
    }
    Some(Ok((
        kind,
        PathBuf::from(file),
        reference.map(str::to_owned),
    )))
}

/// Reads the archive at `path`. `reference` picks an image when the archive holds several:
/// oci-archive: matched against the index entry's "org.opencontainers.image.ref.name"
/// annotation (a tag, as skopeo writes it) or "io.containerd.image.name" (a full reference);
/// docker-archive: against the RepoTags entries (exactly, or with "docker.io/" and
/// "docker.io/library/" prefixes ignored, and ":latest" implied when it has no tag), or
/// "@N" for the N-th entry of manifest.json (as skopeo allows). With None the archive must
/// hold exactly one image (after platform selection), else the error lists what it holds.
///
/// Only linux/amd64 images are accepted: from a multi-platform index the linux/amd64 entry is
/// chosen, and the config must say so too.
pub fn read_archive(
    path: &Path,
    kind: ArchiveKind,
    reference: Option<&str>,
) -> Result<ArchiveImage, String> {
    let label = format!("{} {}", kind.transport(), path.display());
    let file = File::open(path).map_err(|e| format!("{label}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{label}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{label}: not a regular file"));
    }
    let archive = Archive::scan(label, file, meta.len(), kind)?;
    match kind {
        ArchiveKind::Oci => read_oci(&archive, reference),
        ArchiveKind::Docker => read_docker(&archive, reference),
    }
}

// ---------------------------------------------------------------------------------------------
// The archive's member list.

/// What a member is.
#[derive(Debug, Clone, PartialEq)]
enum MemberKind {
    /// A regular file: its data is the byte range.
    Regular,
    /// A directory.
    Directory,
    /// A sparse file: its data is not one byte range.
    Sparse,
    /// A symbolic link (its target relative to the member's directory) or a hard link (its
    /// target a member name). `docker save` writes a layer it saved already as a symlink to
    /// the first copy (`../<id>/layer.tar`).
    Link { target: Vec<u8>, symbolic: bool },
    /// Anything else (devices, fifos, ...), with the tar entry type for messages.
    Other(String),
}

/// The most links followed from one member name.
const MAX_LINK_HOPS: usize = 8;

/// One member of the archive.
#[derive(Debug, Clone)]
struct Member {
    /// Where its data starts in the archive file.
    offset: u64,
    /// How many bytes of data it has there.
    size: u64,
    /// What it is.
    kind: MemberKind,
}

/// An archive file and its members, by name (leading "./" and trailing "/" removed).
#[derive(Debug)]
struct Archive {
    /// "oci-archive FILE", the start of every message.
    label: String,
    file: File,
    len: u64,
    members: HashMap<Vec<u8>, Member>,
    /// Whether a blob may be a link to another member (docker-archive; an OCI layout's
    /// blobs are regular files).
    follow_links: bool,
}

/// The file as the tar reader sees it while scanning: reads are counted against a budget
/// (seeks over member data are free), so that a hostile long name or pax record cannot make
/// the reader allocate without bound.
#[derive(Debug)]
struct Budgeted<'a> {
    file: &'a File,
    left: u64,
}

impl Read for Budgeted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "more than {} MiB of tar headers (long names or pax records)",
                MAX_HEADER_BYTES >> 20
            ))
        })?;
        Ok(n)
    }
}

impl Seek for Budgeted<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// The member a link named `from` points to: a symlink's `target` is relative to `from`'s
/// directory, a hard link's is a member name. None when it is absolute or climbs out of the
/// archive's top (a name is taken as bytes split at '/': "." and empty parts vanish, ".."
/// drops the part before it).
fn link_target(from: &[u8], target: &[u8], symbolic: bool) -> Option<Vec<u8>> {
    if target.starts_with(b"/") || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    if symbolic {
        parts.extend(from.split(|&b| b == b'/'));
        parts.pop();
    }
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join(&b'/'))
}

/// Removes the leading "./" (any number of them) and trailing "/" of a member name.
fn normalize_name(mut name: &[u8]) -> &[u8] {
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest;
    }
    while let Some(rest) = name.strip_suffix(b"/") {
        name = rest;
    }
    if name == b"." { b"" } else { name }
}

impl Archive {
    /// Reads the member list of the tar file.
    fn scan(label: String, file: File, len: u64, kind: ArchiveKind) -> Result<Archive, String> {
        let mut members = HashMap::new();
        {
            let reader = Budgeted {
                file: &file,
                left: MAX_HEADER_BYTES,
            };
            let mut tar = tar::Archive::new(reader);
            let entries = tar
                .entries_with_seek()
                .map_err(|e| format!("{label}: not a readable tar archive: {e}"))?;
            let mut count = 0usize;
            for entry in entries {
                let mut entry =
                    entry.map_err(|e| format!("{label}: not a readable tar archive: {e}"))?;
                count += 1;
                if count > MAX_MEMBERS {
                    return Err(format!(
                        "{label}: the archive has more than {MAX_MEMBERS} members"
                    ));
                }
                let entry_type = entry.header().entry_type();
                if entry_type.is_pax_global_extensions() {
                    continue;
                }
                let raw = entry.path_bytes().into_owned();
                if raw.len() > MAX_NAME {
                    return Err(format!(
                        "{label}: {}: a member name of {} bytes, more than {MAX_NAME}",
                        short(&String::from_utf8_lossy(&raw)),
                        raw.len()
                    ));
                }
                let name = normalize_name(&raw).to_vec();
                let shown = String::from_utf8_lossy(&name).into_owned();
                let bad_pax =
                    |e: io::Error| format!("{label}: {}: bad pax header: {e}", short(&shown));
                let mut pax_sparse = false;
                if let Some(pax) = entry.pax_extensions().map_err(bad_pax)? {
                    for record in pax {
                        // The pax form of GNU sparse files: the data is a map plus chunks.
                        pax_sparse |= record
                            .map_err(bad_pax)?
                            .key_bytes()
                            .starts_with(b"GNU.sparse.");
                    }
                }
                let member_kind = if entry_type.is_dir() {
                    MemberKind::Directory
                } else if entry_type.is_gnu_sparse() || pax_sparse {
                    MemberKind::Sparse
                } else if entry_type.is_file() || entry_type.is_contiguous() {
                    MemberKind::Regular
                } else if entry_type.is_symlink() || entry_type.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let symbolic = entry_type.is_symlink();
                    MemberKind::Link { target, symbolic }
                } else {
                    MemberKind::Other(format!("{entry_type:?}").to_lowercase())
                };
                if name.is_empty() {
                    continue;
                }
                if kind == ArchiveKind::Oci
                    && member_kind != MemberKind::Directory
                    && let Some(hex) = name.strip_prefix(b"blobs/sha256/")
                    && !is_hex64(hex)
                {
                    return Err(format!(
                        "{label}: {}: a blob name must be 64 lowercase hex digits",
                        short(&shown)
                    ));
                }
                let member = Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                    kind: member_kind,
                };
                if members.insert(name, member).is_some() {
                    return Err(format!(
                        "{label}: {}: the archive holds this member twice",
                        short(&shown)
                    ));
                }
            }
        }
        Ok(Archive {
            label,
            file,
            len,
            members,
            follow_links: kind == ArchiveKind::Docker,
        })
    }

    /// A message about `member`.
    fn err(&self, member: &str, msg: impl Display) -> String {
        format!("{}: {}: {msg}", self.label, short(member))
    }

    /// The regular-file member `name`, holding the `what` (for messages), with its data
    /// inside the file.
    /// A docker-archive's blob may be a link to another member, followed inside the archive.
    fn blob(&self, name: &str, what: &str) -> Result<&Member, String> {
        let mut current = name.as_bytes().to_vec();
        let mut hops = 0;
        let member = loop {
            let shown = String::from_utf8_lossy(&current).into_owned();
            let member = self.members.get(&current).ok_or_else(|| match hops {
                0 => self.err(name, format!("missing from the archive (the {what})")),
                _ => self.err(
                    name,
                    format!("a link to {}, which the archive lacks", short(&shown)),
                ),
            })?;
            let MemberKind::Link { target, symbolic } = &member.kind else {
                break member;
            };
            if !self.follow_links {
                let t = if *symbolic { "symlink" } else { "link" };
                return Err(self.err(
                    &shown,
                    format!("is a {t} member; the {what} must be a regular file"),
                ));
            }
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(self.err(
                    name,
                    format!("more than {MAX_LINK_HOPS} links in a row (a loop?)"),
                ));
            }
            current = link_target(&current, target, *symbolic).ok_or_else(|| {
                self.err(
                    &shown,
                    format!(
                        "a link to {:?}, outside the archive",
                        short(&String::from_utf8_lossy(target))
                    ),
                )
            })?;
        };
        match &member.kind {
            MemberKind::Link { .. } | MemberKind::Regular => {}
            MemberKind::Directory => {
                return Err(self.err(name, format!("is a directory, not the {what}")));
            }
            MemberKind::Sparse => {
                return Err(self.err(
                    name,
                    format!("is a sparse file; the {what} must be a plain regular file"),
                ));
            }
            MemberKind::Other(t) => {
                return Err(self.err(
                    name,
                    format!("is a {t} member; the {what} must be a regular file"),
                ));
            }
        }
        if member
            .offset
            .checked_add(member.size)
            .is_none_or(|end| end > self.len)
        {
            return Err(self.err(
                name,
                format!(
                    "its {} bytes run past the end of the archive (truncated?)",
                    member.size
                ),
            ));
        }
        Ok(member)
    }

    /// Reads `member` (at most 4 MiB), named `name`, holding the `what`.
    fn read(&self, name: &str, member: &Member, what: &str) -> Result<Vec<u8>, String> {
        if member.size > MAX_JSON {
            return Err(self.err(
                name,
                format!("the {what} is {} bytes, more than 4 MiB", member.size),
            ));
        }
        let mut buf = vec![0; member.size as usize];
        self.file
            .read_exact_at(&mut buf, member.offset)
            .map_err(|e| self.err(name, format!("reading the {what}: {e}")))?;
        Ok(buf)
    }

    /// Reads the regular-file member `name` (at most 4 MiB), holding the `what`.
    fn read_small(&self, name: &str, what: &str) -> Result<Vec<u8>, String> {
        let member = self.blob(name, what)?;
        self.read(name, member, what)
    }

    /// The sha256 digest of `member`'s data and its first 4 bytes (fewer when shorter).
    fn hash(&self, name: &str, member: &Member) -> Result<(String, Vec<u8>), String> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0; HASH_CHUNK.min(member.size as usize)];
        let mut head = Vec::new();
        let mut done = 0u64;
        while done < member.size {
            let n = (member.size - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            self.file
                .read_exact_at(chunk, member.offset + done)
                .map_err(|e| self.err(name, format!("reading the layer: {e}")))?;
            if head.len() < 4 {
                let want = (4 - head.len()).min(n);
                head.extend_from_slice(&chunk[..want]);
            }
            hasher.update(&*chunk);
            done += n as u64;
        }
        Ok((format!("sha256:{}", hex(&hasher.finalize())), head))
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Parses the JSON document `bytes` read from `name`.
fn parse_json<T: for<'de> Deserialize<'de>>(
    archive: &Archive,
    name: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| archive.err(name, format!("bad {what}: {e}")))
}

/// Splits an image reference "repo[:tag][@digest]" into repo and tag. The tag is what
/// follows the last ':' after the last '/' (a ':' before that is a registry port).
fn split_reference(reference: &str) -> (Option<String>, Option<String>) {
    let base = reference.split('@').next().unwrap_or_default();
    let slash = base.rfind('/');
    let (repo, tag) = match base.rfind(':') {
        Some(colon) if slash.is_none_or(|slash| colon > slash) => {
            (&base[..colon], Some(&base[colon + 1..]))
        }
        _ => (base, None),
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    (some(repo), tag.and_then(some))
}

/// A reference with the default registry's spellings removed: "docker.io/library/busybox"
/// and "docker.io/busybox" are "busybox".
fn normalize_reference(reference: &str) -> &str {
    let r = reference
        .strip_prefix("docker.io/")
        .or_else(|| reference.strip_prefix("index.docker.io/"))
        .unwrap_or(reference);
    r.strip_prefix("library/").unwrap_or(r)
}

/// Whether the archive's name `name` ("docker.io/library/busybox:latest") is what the user's
/// `reference` ("busybox", "busybox:latest", "docker.io/library/busybox:latest") means.
fn reference_matches(name: &str, reference: &str) -> bool {
    if name == reference || normalize_reference(name) == normalize_reference(reference) {
        return true;
    }
    if !reference.contains('@') && split_reference(reference).1.is_none() {
        let tagged = format!("{reference}:latest");
        return normalize_reference(name) == normalize_reference(&tagged);
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Image config.

// ---------------------------------------------------------------------------------------------
// oci-archive.

/// The member name of the blob a descriptor points to; `from` says where the descriptor is.
fn blob_name(archive: &Archive, from: &str, desc: &Descriptor) -> Result<String, String> {
    let hex = digest_hex(&desc.digest).map_err(|e| archive.err(from, e))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Reads the JSON blob (at most 4 MiB) `desc` points to, holding the `what`, checking its
/// size and digest. `from` says where the descriptor is. Returns its member name and bytes.
fn read_blob(
    archive: &Archive,
    from: &str,
    desc: &Descriptor,
    what: &str,
) -> Result<(String, Vec<u8>), String> {
    let name = blob_name(archive, from, desc)?;
    if desc.size > MAX_JSON {
        return Err(archive.err(
            &name,
            format!("the {what} is {} bytes, more than 4 MiB", desc.size),
        ));
    }
    let member = archive.blob(&name, what)?;
    if member.size != desc.size {
        return Err(archive.err(
            &name,
            format!(
                "the {what} is {} bytes but its descriptor in {} says {}",
                member.size,
                short(from),
                desc.size
            ),
        ));
    }
    let bytes = archive.read(&name, member, what)?;
    let actual = sha256(&bytes);
    if actual != desc.digest {
        return Err(archive.err(
            &name,
            format!(
                "the {what}'s bytes hash to {actual}, not to its digest {}",
                desc.digest
            ),
        ));
    }
    Ok((name, bytes))
}

/// Checks that a document's own mediaType, if it has one, is the one its descriptor gave.
fn check_media_type(
    archive: &Archive,
    name: &str,
    own: Option<&str>,
    expected: &str,
) -> Result<(), String> {
    match own {
        Some(own) if own != expected => Err(archive.err(
            name,
            format!(
                "its mediaType {:?} differs from its descriptor's {:?}",
                short(own),
                short(expected)
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks the image config read from `name` ([`hull_spec::docker::check_config`]).
fn check_config(
    archive: &Archive,
    name: &str,
    config: &Value,
    layers: usize,
) -> Result<Vec<String>, String> {
    hull_spec::docker::check_config(config, layers).map_err(|e| archive.err(name, e))
}

/// Picks the linux/amd64 entry of the index read from `name`.
fn pick_platform<'a>(
    archive: &Archive,
    name: &str,
    index: &'a Index,
) -> Result<(usize, &'a Descriptor), String> {
    hull_spec::docker::pick_platform(index).map_err(|e| archive.err(name, e))
}

/// Follows `desc` (found at `from`) through nested indexes to an image manifest. Returns the
/// manifest's member name, digest and contents.
fn resolve(
    archive: &Archive,
    from: &str,
    desc: &Descriptor,
    depth: usize,
) -> Result<(String, String, Manifest), String> {
    let declared = desc.media_type.as_deref();
    let what = match declared {
        Some(OCI_INDEX | DOCKER_LIST) => "index",
        Some(OCI_MANIFEST | DOCKER_MANIFEST) | None => "manifest",
        Some(other) => {
            return Err(archive.err(
                from,
                format!(
                    "{} has media type {:?}, which is neither an image manifest nor an index",
                    short(&desc.digest),
                    short(other)
                ),
            ));
        }
    };
    let (name, bytes) = read_blob(archive, from, desc, what)?;
    let media_type = match declared {
        Some(m) => m.to_owned(),
        // No media type in the descriptor: the document's own must say.
        None => {
            let own: Value = parse_json(archive, &name, "manifest", &bytes)?;
            own.get("mediaType")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    archive.err(&name, "neither it nor its descriptor gives a mediaType")
                })?
                .to_owned()
        }
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            if depth >= MAX_DEPTH {
                return Err(archive.err(&name, format!("indexes nest more than {MAX_DEPTH} deep")));
            }
            let index: Index = parse_json(archive, &name, "index", &bytes)?;
            check_media_type(archive, &name, index.media_type.as_deref(), &media_type)?;
            if index.schema_version != Some(2) {
                return Err(archive.err(&name, "the index's schemaVersion is not 2"));
            }
            let (i, next) = pick_platform(archive, &name, &index)?;
            resolve(archive, &format!("{name} manifests[{i}]"), next, depth + 1)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let manifest: Manifest = parse_json(archive, &name, "manifest", &bytes)?;
            check_media_type(archive, &name, manifest.media_type.as_deref(), &media_type)?;
            if manifest.schema_version != Some(2) {
                return Err(archive.err(&name, "the manifest's schemaVersion is not 2"));
            }
            Ok((name, desc.digest.clone(), manifest))
        }
        other => Err(archive.err(
            &name,
            format!(
                "media type {:?} is neither an image manifest nor an index",
                short(other)
            ),
        )),
    }
}

/// Repository and tag an index.json entry names its image by.
fn oci_names(desc: &Descriptor) -> (Option<String>, Option<String>) {
    if let Some(full) = desc.annotation(CONTAINERD_NAME) {
        return split_reference(full);
    }
    match desc.annotation(REF_NAME) {
        // A tag cannot hold these: this is a full reference.
        Some(name) if name.contains(['/', ':', '@']) => split_reference(name),
        Some(tag) if !tag.is_empty() => (None, Some(tag.to_owned())),
        _ => (None, None),
    }
}

/// Whether an index.json entry is what `reference` names.
fn oci_matches(desc: &Descriptor, reference: &str) -> bool {
    desc.annotation(REF_NAME).is_some_and(|n| n == reference)
        || desc
            .annotation(CONTAINERD_NAME)
            .is_some_and(|n| reference_matches(n, reference))
}

/// Reads an oci-archive.
fn read_oci(archive: &Archive, reference: Option<&str>) -> Result<ArchiveImage, String> {
    let layout = archive.read_small("oci-layout", "layout file")?;
    let layout: Value = parse_json(archive, "oci-layout", "layout file", &layout)?;
    match layout.get("imageLayoutVersion").and_then(Value::as_str) {
        Some("1.0.0") => {}
        Some(v) => {
            return Err(archive.err(
                "oci-layout",
                format!("imageLayoutVersion {:?} is not \"1.0.0\"", short(v)),
            ));
        }
        None => return Err(archive.err("oci-layout", "no imageLayoutVersion")),
    }

    let bytes = archive.read_small("index.json", "index")?;
    let index: Index = parse_json(archive, "index.json", "index", &bytes)?;
    if index.schema_version != Some(2) {
        return Err(archive.err("index.json", "the index's schemaVersion is not 2"));
    }
    let describe = |list: &[&Descriptor]| -> String {
        list.iter()
            .map(|d| d.describe())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&Descriptor> = index.manifests.iter().collect();
    if all.is_empty() {
        return Err(archive.err("index.json", "the index lists no images"));
    }
    let named: Vec<&Descriptor> = match reference {
        Some(reference) => {
            let named: Vec<&Descriptor> = all
                .iter()
                .copied()
                .filter(|d| oci_matches(d, reference))
                .collect();
            if named.is_empty() {
                return Err(archive.err(
                    "index.json",
                    format!(
                        "no image named {:?}; the archive holds: {}",
                        short(reference),
                        describe(&all)
                    ),
                ));
            }
            named
        }
        None => all.clone(),
    };
    // Entries that say they are for another platform are not candidates.
    let candidates: Vec<&Descriptor> = named
        .iter()
        .copied()
        .filter(|d| d.platform.is_none() || d.is_linux_amd64())
        .collect();
    let top = match candidates.as_slice() {
        [] => {
            return Err(archive.err(
                "index.json",
                format!(
                    "the archive holds no linux/amd64 image; it offers: {}",
                    platforms(&named)
                ),
            ));
        }
        [one] => *one,
        several => {
            let hint = match reference {
                Some(_) => "several images carry that name",
                None => "name one as oci-archive:FILE:REF",
            };
            return Err(archive.err(
                "index.json",
                format!(
                    "the archive holds {} images ({hint}): {}",
                    several.len(),
                    describe(several)
                ),
            ));
        }
    };
    let position = index
        .manifests
        .iter()
        .position(|d| std::ptr::eq(d, top))
        .unwrap_or_default();
    let (repo, tag) = oci_names(top);

    let (manifest_name, manifest_digest, manifest) = resolve(
        archive,
        &format!("index.json manifests[{position}]"),
        top,
        0,
    )?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(archive.err(
            &manifest_name,
            format!(
                "the image has {} layers, more than {MAX_LAYERS}",
                manifest.layers.len()
            ),
        ));
    }

    let from_config = format!("{manifest_name} config");
    match manifest.config.media_type.as_deref() {
        Some(OCI_CONFIG | DOCKER_CONFIG) => {}
        other => {
            return Err(archive.err(
                &from_config,
                format!(
                    "media type {:?} is not an image config",
                    short(other.unwrap_or("(none)"))
                ),
            ));
        }
    }
    let (config_name, config_bytes) = read_blob(archive, &from_config, &manifest.config, "config")?;
    let config: Value = parse_json(archive, &config_name, "config", &config_bytes)?;
    let diff_ids = check_config(archive, &config_name, &config, manifest.layers.len())?;

    let mut layers = Vec::with_capacity(manifest.layers.len());
    let mut offsets = Vec::with_capacity(manifest.layers.len());
    for (i, (desc, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let from = format!("{manifest_name} layers[{i}]");
        let media_type = desc
            .media_type
            .as_deref()
            .ok_or_else(|| archive.err(&from, "the layer has no mediaType"))?;
        let compression = layer_compression(media_type).ok_or_else(|| {
            archive.err(
                &from,
                format!(
                    "layer media type {:?} is not supported (plain, gzip or zstd tar only)",
                    short(media_type)
                ),
            )
        })?;
        let name = blob_name(archive, &from, desc)?;
        let member = archive.blob(&name, "layer")?;
        if member.size != desc.size {
            return Err(archive.err(
                &name,
                format!(
                    "the layer is {} bytes but its descriptor in {} says {}",
                    member.size,
                    short(&from),
                    desc.size
                ),
            ));
        }
        layers.push(docker::Layer {
            digest: desc.digest.clone(),
            diff_id,
            compression,
            size: member.size,
        });
        offsets.push(member.offset);
    }

    let image = DockerImage {
        repo,
        tag,
        manifest_digest,
        config_digest: manifest.config.digest.clone(),
        config,
        layers,
    };
    Ok(ArchiveImage { image, offsets })
}

// ---------------------------------------------------------------------------------------------
// docker-archive.

/// One image of a docker-archive's manifest.json.
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl DockerEntry {
    /// Its tags.
    fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }

    /// How messages name it.
    fn describe(&self, i: usize) -> String {
        match self.tags() {
            [] => format!("@{i} (untagged, config {})", short(&self.config)),
            tags => format!(
                "@{i} ({})",
                tags.iter().map(|t| short(t)).collect::<Vec<_>>().join(" ")
            ),
        }
    }
}

/// The compression the first bytes of a layer show.
fn sniff_compression(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else {
        "none"
    }
}

/// The content digest hex a member name spells, if it spells one: "<hex>.json" (configs) or
/// "blobs/sha256/<hex>" (docker 25's save format).
fn named_hex(name: &str) -> Option<&str> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    is_hex64(hex.as_bytes()).then_some(hex)
}

/// Reads a docker-archive.
fn read_docker(archive: &Archive, reference: Option<&str>) -> Result<ArchiveImage, String> {
    const MANIFEST: &str = "manifest.json";
    let bytes = archive.read_small(MANIFEST, "manifest")?;
    let entries: Vec<DockerEntry> = parse_json(archive, MANIFEST, "manifest", &bytes)?;
    let describe = || -> String {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| e.describe(i))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if entries.is_empty() {
        return Err(archive.err(MANIFEST, "it lists no images"));
    }

    let by_position = reference.and_then(|r| r.strip_prefix('@'));
    let (entry, matched_tag) = match (reference, by_position) {
        (Some(reference), Some(position)) => {
            let entry = position
                .parse::<usize>()
                .ok()
                .and_then(|i| entries.get(i))
                .ok_or_else(|| {
                    archive.err(
                        MANIFEST,
                        format!(
                            "no image {:?}; the archive holds: {}",
                            short(reference),
                            describe()
                        ),
                    )
                })?;
            (entry, None)
        }
        (Some(reference), None) => {
            let matches: Vec<(&DockerEntry, &String)> = entries
                .iter()
                .filter_map(|e| {
                    e.tags()
                        .iter()
                        .find(|t| reference_matches(t, reference))
                        .map(|t| (e, t))
                })
                .collect();
            match matches.as_slice() {
                [(entry, tag)] => (*entry, Some(tag.as_str())),
                [] => {
                    return Err(archive.err(
                        MANIFEST,
                        format!(
                            "no image tagged {:?}; the archive holds: {}",
                            short(reference),
                            describe()
                        ),
                    ));
                }
                several => {
                    return Err(archive.err(
                        MANIFEST,
                        format!(
                            "{} images carry the tag {:?}; the archive holds: {} \
                             (pick one as docker-archive:FILE:@N)",
                            several.len(),
                            short(reference),
                            describe()
                        ),
                    ));
                }
            }
        }
        (None, _) => match entries.as_slice() {
            [only] => (only, None),
            several => {
                return Err(archive.err(
                    MANIFEST,
                    format!(
                        "the archive holds {} images (name one as docker-archive:FILE:REF \
                         or docker-archive:FILE:@N): {}",
                        several.len(),
                        describe()
                    ),
                ));
            }
        },
    };
    let (repo, tag) = matched_tag
        .or_else(|| entry.tags().first().map(String::as_str))
        .map_or((None, None), split_reference);

    if entry.layers.len() > MAX_LAYERS {
        return Err(archive.err(
            MANIFEST,
            format!(
                "the image has {} layers, more than {MAX_LAYERS}",
                entry.layers.len()
            ),
        ));
    }

    let config_name = String::from_utf8_lossy(normalize_name(entry.config.as_bytes())).into_owned();
    let config_bytes = archive.read_small(&config_name, "config")?;
    let config_digest = sha256(&config_bytes);
    if let Some(hex) = named_hex(&config_name)
        && config_digest != format!("sha256:{hex}")
    {
        return Err(archive.err(
            &config_name,
            format!("the config's bytes hash to {config_digest}, not to the digest its name gives"),
        ));
    }
    let config: Value = parse_json(archive, &config_name, "config", &config_bytes)?;
    let diff_ids = check_config(archive, &config_name, &config, entry.layers.len())?;

    let mut hashed: HashMap<String, (String, &'static str)> = HashMap::new();
    let mut layers = Vec::with_capacity(entry.layers.len());
    let mut offsets = Vec::with_capacity(entry.layers.len());
    for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
        let name = String::from_utf8_lossy(normalize_name(path.as_bytes())).into_owned();
        let member = archive.blob(&name, "layer")?;
        let (digest, compression) = match hashed.get(&name) {
            Some(known) => known.clone(),
            None => {
                let (digest, head) = archive.hash(&name, member)?;
                if let Some(hex) = name.strip_prefix("blobs/sha256/")
                    && digest != format!("sha256:{hex}")
                {
                    return Err(archive.err(
                        &name,
                        format!(
                            "the layer's bytes hash to {digest}, not to the digest its name gives"
                        ),
                    ));
                }
                let known = (digest, sniff_compression(&head));
                hashed.insert(name.clone(), known.clone());
                known
            }
        };
        layers.push(docker::Layer {
            digest,
            diff_id,
            compression,
            size: member.size,
        });
        offsets.push(member.offset);
    }

    let image = DockerImage {
        repo,
        tag,
        manifest_digest: config_digest.clone(),
        config_digest,
        config,
        layers,
    };
    Ok(ArchiveImage { image, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use serde_json::json;

    const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

    /// A tar archive of `members` (name, data), all regular files.
    fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        tar_with_links(members, &[])
    }

    /// `bytes` in a temporary file.
    fn temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        file.write_all(bytes).expect("write");
        file.flush().expect("flush");
        file
    }

    /// The stored range of `img`'s layer `i` in `file`.
    fn range(file: &Path, img: &ArchiveImage, i: usize) -> Vec<u8> {
        let data = std::fs::read(file).expect("read");
        let (offset, size) = (img.offsets[i] as usize, img.image.layers[i].size as usize);
        data[offset..offset + size].to_vec()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("gzip");
        encoder.finish().expect("gzip")
    }

    /// A small layer tar holding one file.
    fn layer_tar(file: &str, content: &[u8]) -> Vec<u8> {
        tar_of(&[(file.to_owned(), content.to_vec())])
    }

    fn json_bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).expect("json")
    }

    fn blob_member(bytes: &[u8]) -> String {
        format!("blobs/sha256/{}", &sha256(bytes)[7..])
    }

    fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
        json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
    }

    fn config_for(arch: &str, diff_ids: &[String]) -> Vec<u8> {
        json_bytes(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
    }

    /// An OCI image under construction: its blobs as archive members.
    #[derive(Debug, Default)]
    struct Oci {
        members: Vec<(String, Vec<u8>)>,
    }

    impl Oci {
        fn blob(&mut self, bytes: Vec<u8>) {
            self.members.push((blob_member(&bytes), bytes));
        }

        /// Adds an image with `layers` (media type, uncompressed tar) for `arch`; returns
        /// its manifest's bytes.
        fn image(&mut self, arch: &str, layers: &[(&str, Vec<u8>)]) -> Vec<u8> {
            let diff_ids: Vec<String> = layers.iter().map(|(_, tar)| sha256(tar)).collect();
            let config = config_for(arch, &diff_ids);
            let mut descriptors = Vec::new();
            for (media_type, tar) in layers {
                let stored = if media_type.ends_with("gzip") {
                    gzip(tar)
                } else {
                    tar.clone()
                };
                descriptors.push(descriptor(media_type, &stored));
                self.blob(stored);
            }
            let manifest = json_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, &config),
                "layers": descriptors,
            }));
            self.blob(config);
            self.blob(manifest.clone());
            manifest
        }

        /// The archive: oci-layout, index.json listing `entries`, the blobs.
        fn archive(mut self, entries: Vec<Value>) -> Vec<u8> {
            let index = json_bytes(&json!({"schemaVersion": 2, "manifests": entries}));
            self.members.push(("index.json".to_owned(), index));
            self.members.push((
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ));
            tar_of(&self.members)
        }
    }

    fn read(
        bytes: &[u8],
        kind: ArchiveKind,
        reference: Option<&str>,
    ) -> Result<ArchiveImage, String> {
        let file = temp(bytes);
        read_archive(file.path(), kind, reference)
    }

    fn expect_err(result: Result<ArchiveImage, String>, needles: &[&str]) -> String {
        let err = result.expect_err("should be refused");
        for needle in needles {
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        err
    }

    #[test]
    fn oci_multi_platform_two_layers() {
        let base = layer_tar("base.txt", b"base layer");
        let top = layer_tar("top.txt", b"top layer");
        let mut oci = Oci::default();
        let arm = oci.image("arm64", &[(TAR_LAYER, layer_tar("arm", b"arm"))]);
        let amd = oci.image(
            "amd64",
            &[(GZIP_LAYER, base.clone()), (TAR_LAYER, top.clone())],
        );
        let list = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": sha256(&arm), "size": arm.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": sha256(&amd), "size": amd.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }));
        oci.blob(list.clone());
        let mut entry = descriptor(DOCKER_LIST, &list);
        entry["annotations"] = json!({
            REF_NAME: "latest",
            CONTAINERD_NAME: "docker.io/library/hello:latest",
        });
        // Shuffle: the index and layout first, blobs reversed, some with "./".
        let mut bytes_members = oci.members.clone();
        bytes_members.reverse();
        for (i, (name, _)) in bytes_members.iter_mut().enumerate() {
            if i % 2 == 0 {
                *name = format!("./{name}");
            }
        }
        let index = json_bytes(&json!({"schemaVersion": 2, "manifests": [entry]}));
        let mut members = vec![
            ("./index.json".to_owned(), index),
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
        ];
        members.append(&mut bytes_members);
        let file = temp(&tar_of(&members));

        let image = read_archive(file.path(), ArchiveKind::Oci, None).expect("read");
        assert_eq!(image.image.repo.as_deref(), Some("docker.io/library/hello"));
        assert_eq!(image.image.tag.as_deref(), Some("latest"));
        assert_eq!(image.image.manifest_digest, sha256(&amd));
        assert_eq!(image.image.config["architecture"], "amd64");
        assert_eq!(image.image.config["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(
            image.image.config_digest,
            sha256(&config_for("amd64", &[sha256(&base), sha256(&top)]))
        );
        assert_eq!(image.image.layers.len(), 2);
        let [gz, plain] = image.image.layers.as_slice() else {
            panic!("two layers");
        };
        assert_eq!(gz.compression, "gzip");
        assert_eq!(gz.diff_id, sha256(&base));
        assert_eq!(sha256(&range(file.path(), &image, 0)), gz.digest);
        assert_eq!(range(file.path(), &image, 0)[..2], [0x1f, 0x8b]);
        assert_eq!(plain.compression, "none");
        assert_eq!(plain.diff_id, sha256(&top));
        assert_eq!(plain.digest, sha256(&top));
        assert_eq!(range(file.path(), &image, 1), top);
        assert_eq!(plain.size, top.len() as u64);

        // By reference: the tag, or the containerd name.
        for reference in ["latest", "docker.io/library/hello:latest", "hello"] {
            let image = read_archive(file.path(), ArchiveKind::Oci, Some(reference))
                .unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(image.image.manifest_digest, sha256(&amd));
        }
        expect_err(
            read_archive(file.path(), ArchiveKind::Oci, Some("v2")),
            &["no image named \"v2\"", "docker.io/library/hello:latest"],
        );
    }

    #[test]
    fn oci_two_images_by_reference() {
        let mut oci = Oci::default();
        let one = oci.image("amd64", &[(TAR_LAYER, layer_tar("a", b"one"))]);
        let two = oci.image("amd64", &[(TAR_LAYER, layer_tar("b", b"two"))]);
        let mut e1 = descriptor(OCI_MANIFEST, &one);
        e1["annotations"] = json!({REF_NAME: "v1"});
        let mut e2 = descriptor(OCI_MANIFEST, &two);
        e2["annotations"] = json!({REF_NAME: "v2"});
        let bytes = oci.archive(vec![e1, e2]);
        let image = read(&bytes, ArchiveKind::Oci, Some("v2")).expect("v2");
        assert_eq!(image.image.manifest_digest, sha256(&two));
        assert_eq!(image.image.repo, None);
        assert_eq!(image.image.tag.as_deref(), Some("v2"));
        let image = read(&bytes, ArchiveKind::Oci, Some("v1")).expect("v1");
        assert_eq!(image.image.manifest_digest, sha256(&one));
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &["holds 2 images", "v1", "v2"],
        );
    }

    #[test]
    fn oci_no_amd64() {
        let mut oci = Oci::default();
        let arm = oci.image("arm64", &[(TAR_LAYER, layer_tar("a", b"arm"))]);
        let s390 = oci.image("s390x", &[(TAR_LAYER, layer_tar("s", b"s390x"))]);
        let index = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": sha256(&arm), "size": arm.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": sha256(&s390), "size": s390.len(),
                 "platform": {"os": "linux", "architecture": "s390x"}},
            ],
        }));
        oci.blob(index.clone());
        let bytes = oci.archive(vec![descriptor(OCI_INDEX, &index)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &["no linux/amd64", "linux/arm64/v8", "linux/s390x"],
        );

        // A single manifest whose config says arm64.
        let mut oci = Oci::default();
        let arm = oci.image("arm64", &[(TAR_LAYER, layer_tar("a", b"arm"))]);
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &arm)]);
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["arm64", "amd64"]);
    }

    /// A one-layer OCI archive whose config or manifest is replaced by `edit`.
    fn oci_edited(edit: impl FnOnce(&mut Value, &mut Value)) -> (Vec<u8>, Oci) {
        let tar = layer_tar("a", b"data");
        let mut config: Value =
            serde_json::from_slice(&config_for("amd64", &[sha256(&tar)])).expect("config");
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Value::Null,
            "layers": [descriptor(TAR_LAYER, &tar)],
        });
        edit(&mut config, &mut manifest);
        let config = json_bytes(&config);
        if manifest["config"].is_null() {
            manifest["config"] = descriptor(OCI_CONFIG, &config);
        }
        let manifest = json_bytes(&manifest);
        let mut oci = Oci::default();
        oci.blob(tar);
        oci.blob(config);
        oci.blob(manifest.clone());
        (manifest, oci)
    }

    #[test]
    fn oci_refusals() {
        // Unknown layer media type.
        let (manifest, oci) = oci_edited(|_, m| {
            m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+encrypted");
        });
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &[
                "layers[0]",
                "application/vnd.oci.image.layer.v1.tar+encrypted",
            ],
        );

        // diff_ids count mismatch.
        let (manifest, oci) = oci_edited(|c, _| {
            c["rootfs"]["diff_ids"]
                .as_array_mut()
                .expect("array")
                .push(json!(sha256(b"x")));
        });
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &["2 rootfs.diff_ids", "1 layers"],
        );

        // rootfs.type.
        let (manifest, oci) = oci_edited(|c, _| c["rootfs"]["type"] = json!("other"));
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["rootfs.type"]);

        // Config digest mismatch: the descriptor names other bytes, stored under that name.
        let wrong = br#"{"os":"linux"}"#.to_vec();
        let (manifest, mut oci) = oci_edited(|_, m| {
            m["config"] = descriptor(OCI_CONFIG, &wrong);
        });
        let name = blob_member(&wrong);
        let mut tampered = wrong.clone();
        tampered[2] = b'O';
        oci.members.push((name.clone(), tampered));
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &[&name, "config's bytes hash to"],
        );

        // Layer size differs from the descriptor.
        let (manifest, oci) = oci_edited(|_, m| m["layers"][0]["size"] = json!(3));
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["says 3"]);

        // A digest with another algorithm.
        let (manifest, oci) = oci_edited(|_, m| {
            m["layers"][0]["digest"] = json!(format!("sha512:{}", "a".repeat(128)));
        });
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &["\"sha512\"", "only sha256"],
        );

        // A missing layer blob.
        let (manifest, mut oci) = oci_edited(|_, _| {});
        let tar = layer_tar("a", b"data");
        oci.members.retain(|(_, data)| *data != tar);
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &[&blob_member(&tar), "missing"],
        );

        // No oci-layout.
        let (manifest, oci) = oci_edited(|_, _| {});
        let mut bytes_members = oci.members;
        bytes_members.push((
            "index.json".to_owned(),
            json_bytes(
                &json!({"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &manifest)]}),
            ),
        ));
        expect_err(
            read(&tar_of(&bytes_members), ArchiveKind::Oci, None),
            &["oci-layout", "missing"],
        );
    }

    #[test]
    fn oci_manifest_over_4_mib() {
        let (manifest, mut oci) = oci_edited(|_, _| {});
        let mut big = manifest.clone();
        big.pop(); // the closing brace
        big.extend(std::iter::repeat_n(b' ', 4 << 20));
        big.push(b'}');
        oci.blob(big.clone());
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &big)]);
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &[&blob_member(&big), "more than 4 MiB"],
        );
    }

    #[test]
    fn oci_symlink_and_duplicate_members() {
        let (manifest, oci) = oci_edited(|_, _| {});
        let tar = layer_tar("a", b"data");
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in &oci.members {
            if *data == tar {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, name, "../../etc/passwd")
                    .expect("link");
            } else {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, name, data.as_slice())
                    .expect("append");
            }
        }
        let index = json_bytes(
            &json!({"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &manifest)]}),
        );
        for (name, data) in [
            ("index.json", index.as_slice()),
            (
                "oci-layout",
                br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
            ),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, name, data)
                .expect("append");
        }
        let bytes = builder.into_inner().expect("tar");
        expect_err(
            read(&bytes, ArchiveKind::Oci, None),
            &[&blob_member(&tar), "symlink", "regular file"],
        );

        let (manifest, mut oci) = oci_edited(|_, _| {});
        let again = oci.members[0].clone();
        oci.members.push((format!("./{}", again.0), again.1));
        let bytes = oci.archive(vec![descriptor(OCI_MANIFEST, &manifest)]);
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["twice"]);
    }

    /// A docker-archive entry: the config and layer members for `layers`, its manifest.json
    /// entry.
    fn docker_image(
        tags: &[&str],
        layers: &[Vec<u8>],
        members: &mut Vec<(String, Vec<u8>)>,
    ) -> Value {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|stored| {
                if stored.starts_with(&[0x1f, 0x8b]) {
                    let mut tar = Vec::new();
                    flate2::read::GzDecoder::new(stored.as_slice())
                        .read_to_end(&mut tar)
                        .expect("gunzip");
                    sha256(&tar)
                } else {
                    sha256(stored)
                }
            })
            .collect();
        let config = config_for("amd64", &diff_ids);
        let config_name = format!("{}.json", &sha256(&config)[7..]);
        members.push((config_name.clone(), config));
        let mut paths = Vec::new();
        for (i, stored) in layers.iter().enumerate() {
            let path = format!(
                "{}/layer.tar",
                &sha256(&[&[i as u8], stored.as_slice()].concat())[7..]
            );
            members.push((path.clone(), stored.clone()));
            paths.push(path);
        }
        json!({"Config": config_name, "RepoTags": tags, "Layers": paths})
    }

    #[test]
    fn docker_archive_two_layers() {
        let base = layer_tar("base.txt", b"base layer");
        let top = gzip(&layer_tar("top.txt", b"top layer"));
        let mut members = Vec::new();
        let entry = docker_image(
            &["docker.io/library/busybox:latest"],
            &[base.clone(), top.clone()],
            &mut members,
        );
        members.insert(1, ("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        let file = temp(&tar_of(&members));
        let image = read_archive(file.path(), ArchiveKind::Docker, None).expect("read");
        assert_eq!(
            image.image.repo.as_deref(),
            Some("docker.io/library/busybox")
        );
        assert_eq!(image.image.tag.as_deref(), Some("latest"));
        assert_eq!(image.image.config_digest, image.image.manifest_digest);
        assert_eq!(
            format!("{}.json", &image.image.config_digest[7..]),
            entry["Config"].as_str().expect("config")
        );
        let [l0, l1] = image.image.layers.as_slice() else {
            panic!("two layers");
        };
        assert_eq!(l0.compression, "none");
        assert_eq!(l0.digest, sha256(&base));
        assert_eq!(l0.diff_id, l0.digest);
        assert_eq!(range(file.path(), &image, 0), base);
        assert_eq!(l1.compression, "gzip");
        assert_eq!(l1.digest, sha256(&top));
        assert_ne!(l1.diff_id, l1.digest);
        assert_eq!(range(file.path(), &image, 1), top);
        assert_eq!(l1.size, top.len() as u64);
    }

    /// `members` as tar_of, then `links` (name, target, symbolic) as link members.
    fn tar_with_links(members: &[(String, Vec<u8>)], links: &[(&str, &str, bool)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, data.as_slice())
                .expect("append");
        }
        for (name, target, symbolic) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(match symbolic {
                true => tar::EntryType::Symlink,
                false => tar::EntryType::Link,
            });
            header.set_size(0);
            builder
                .append_link(&mut header, name, target)
                .expect("link");
        }
        builder.into_inner().expect("tar")
    }

    /// `docker save` stores a layer it wrote already as a symlink to the first copy (two
    /// identical layers here); a hard link is followed too; a link out of the archive, to a
    /// missing member, in a loop, or in an oci-archive is refused naming the member.
    #[test]
    fn docker_archive_linked_layers() {
        let same = layer_tar("empty", b"");
        let mut members = Vec::new();
        let entry = docker_image(&["x:1"], &[same.clone(), same.clone()], &mut members);
        let first = entry["Layers"][0].as_str().expect("path").to_owned();
        let second = entry["Layers"][1].as_str().expect("path").to_owned();
        members.retain(|(name, _)| *name != second);
        members.push(("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        let first_dir = first.trim_end_matches("/layer.tar");
        let symlink = format!("../{first_dir}/layer.tar");
        let file = temp(&tar_with_links(&members, &[(&second, &symlink, true)]));
        let image = read_archive(file.path(), ArchiveKind::Docker, None).expect("read");
        let [l0, l1] = image.image.layers.as_slice() else {
            panic!("two layers");
        };
        assert_eq!(image.offsets[0], image.offsets[1]);
        assert_eq!(l0.size, l1.size);
        assert_eq!(l1.digest, sha256(&same));
        assert_eq!(range(file.path(), &image, 1), same);
        let file = temp(&tar_with_links(&members, &[(&second, &first, false)]));
        let image = read_archive(file.path(), ArchiveKind::Docker, None).expect("hard link");
        assert_eq!(range(file.path(), &image, 1), same);

        for (target, needle) in [
            ("../../etc/passwd", "outside the archive"),
            ("/etc/passwd", "outside the archive"),
            ("../gone/layer.tar", "which the archive lacks"),
            ("layer.tar", "more than 8 links"),
        ] {
            let bytes = tar_with_links(&members, &[(&second, target, true)]);
            expect_err(read(&bytes, ArchiveKind::Docker, None), &[needle]);
        }
    }

    #[test]
    fn docker_archive_by_reference() {
        let mut members = Vec::new();
        let busybox = docker_image(
            &["docker.io/library/busybox:latest", "busybox:1.36"],
            &[layer_tar("a", b"busybox")],
            &mut members,
        );
        let alpine = docker_image(&["alpine:3"], &[layer_tar("b", b"alpine")], &mut members);
        members.push((
            "manifest.json".to_owned(),
            json_bytes(&json!([busybox, alpine])),
        ));
        let bytes = tar_of(&members);
        let file = temp(&bytes);
        let config_of = |image: &ArchiveImage| format!("{}.json", &image.image.config_digest[7..]);
        for (reference, config, repo, tag) in [
            (
                "busybox:latest",
                &busybox,
                "docker.io/library/busybox",
                "latest",
            ),
            ("busybox", &busybox, "docker.io/library/busybox", "latest"),
            (
                "docker.io/library/busybox:latest",
                &busybox,
                "docker.io/library/busybox",
                "latest",
            ),
            ("docker.io/busybox:1.36", &busybox, "busybox", "1.36"),
            ("alpine:3", &alpine, "alpine", "3"),
            ("docker.io/library/alpine:3", &alpine, "alpine", "3"),
            ("@1", &alpine, "alpine", "3"),
            ("@0", &busybox, "docker.io/library/busybox", "latest"),
        ] {
            let image = read_archive(file.path(), ArchiveKind::Docker, Some(reference))
                .unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(config_of(&image), config["Config"], "{reference}");
            assert_eq!(image.image.repo.as_deref(), Some(repo), "{reference}");
            assert_eq!(image.image.tag.as_deref(), Some(tag), "{reference}");
        }
        expect_err(
            read_archive(file.path(), ArchiveKind::Docker, None),
            &["holds 2 images", "busybox:1.36", "alpine:3"],
        );
        expect_err(
            read_archive(file.path(), ArchiveKind::Docker, Some("alpine:4")),
            &["no image tagged \"alpine:4\""],
        );
        expect_err(
            read_archive(file.path(), ArchiveKind::Docker, Some("@2")),
            &["no image \"@2\""],
        );
    }

    #[test]
    fn docker_archive_refusals() {
        // Config bytes that do not hash to their name.
        let mut members = Vec::new();
        let entry = docker_image(&["x:1"], &[layer_tar("a", b"x")], &mut members);
        members[0].1.push(b' ');
        members.push(("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        expect_err(
            read(&tar_of(&members), ArchiveKind::Docker, None),
            &["config's bytes hash to"],
        );

        // One layer more in the manifest than in diff_ids; a missing layer member.
        let mut members = Vec::new();
        let mut entry = docker_image(&["x:1"], &[layer_tar("a", b"x")], &mut members);
        entry["Layers"]
            .as_array_mut()
            .expect("layers")
            .push(json!("missing/layer.tar"));
        members.push((
            "manifest.json".to_owned(),
            json_bytes(&json!([entry.clone()])),
        ));
        expect_err(
            read(&tar_of(&members), ArchiveKind::Docker, None),
            &["1 rootfs.diff_ids", "2 layers"],
        );

        let mut members = Vec::new();
        let mut entry = docker_image(&["x:1"], &[layer_tar("a", b"x")], &mut members);
        entry["Layers"][0] = json!("missing/layer.tar");
        members.push(("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        expect_err(
            read(&tar_of(&members), ArchiveKind::Docker, None),
            &["missing/layer.tar", "missing"],
        );

        // Not a tar file at all.
        expect_err(
            read(
                b"not a tar file, just some bytes",
                ArchiveKind::Docker,
                None,
            ),
            &["docker-archive"],
        );
    }

    /// A one-layer oci-archive whose layer member is written by `layer` instead.
    fn oci_with_layer_member(
        layer: impl FnOnce(&mut tar::Builder<Vec<u8>>, &str, &[u8]),
    ) -> Vec<u8> {
        let (manifest, oci) = oci_edited(|_, _| {});
        let tar = layer_tar("a", b"data");
        let mut builder = tar::Builder::new(Vec::new());
        let mut layer = Some(layer);
        let index = json_bytes(
            &json!({"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &manifest)]}),
        );
        let mut members = oci.members;
        members.push(("index.json".to_owned(), index));
        members.push((
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        for (name, data) in &members {
            if *data == tar
                && let Some(layer) = layer.take()
            {
                layer(&mut builder, name, data);
            } else {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, name, data.as_slice())
                    .expect("append");
            }
        }
        builder.into_inner().expect("tar")
    }

    /// A pax record "LEN KEY=VALUE\n".
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn sparse_members() {
        // A pax-extended regular file carrying GNU sparse records (the pax sparse format).
        let bytes = oci_with_layer_member(|builder, name, data| {
            let pax = [
                pax_record("GNU.sparse.major", "1"),
                pax_record("GNU.sparse.minor", "0"),
            ]
            .concat();
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::XHeader);
            header.set_size(pax.len() as u64);
            header.set_path("PaxHeaders/layer").expect("path");
            header.set_cksum();
            builder.append(&header, pax.as_slice()).expect("pax");
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, name, data)
                .expect("append");
        });
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["sparse file"]);

        // A GNU sparse ('S') member, one chunk covering it all.
        let bytes = oci_with_layer_member(|builder, name, data| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::GNUSparse);
            header.set_size(data.len() as u64);
            let gnu = header.as_gnu_mut().expect("gnu");
            let octal = |n: usize| -> [u8; 12] {
                let mut field = [0; 12];
                field[..11].copy_from_slice(format!("{n:011o}").as_bytes());
                field
            };
            gnu.sparse[0].offset = octal(0);
            gnu.sparse[0].numbytes = octal(data.len());
            gnu.realsize = octal(data.len());
            builder
                .append_data(&mut header, name, data)
                .expect("append");
        });
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["is a sparse file"]);
    }

    #[test]
    fn archive_limits() {
        // A member name over 4096 bytes (a GNU long name).
        let long = format!("{}/f", "d".repeat(4100));
        expect_err(
            read(&tar_of(&[(long, b"x".to_vec())]), ArchiveKind::Docker, None),
            &["more than 4096"],
        );

        // Too many members.
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_MEMBERS)
            .map(|i| (format!("f{i}"), Vec::new()))
            .collect();
        expect_err(
            read(&tar_of(&many), ArchiveKind::Docker, None),
            &["more than 4096 members"],
        );

        // Too many layers.
        let mut members = Vec::new();
        let mut entry = docker_image(&["x:1"], &[layer_tar("a", b"x")], &mut members);
        entry["Layers"] = json!(vec!["a/layer.tar"; MAX_LAYERS + 1]);
        members.push(("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        expect_err(
            read(&tar_of(&members), ArchiveKind::Docker, None),
            &["201 layers, more than 200"],
        );

        // Indexes nested five deep.
        let mut oci = Oci::default();
        let manifest = oci.image("amd64", &[(TAR_LAYER, layer_tar("a", b"a"))]);
        let mut top = descriptor(OCI_MANIFEST, &manifest);
        top["platform"] = json!({"os": "linux", "architecture": "amd64"});
        for _ in 0..5 {
            let index = json_bytes(&json!({"schemaVersion": 2, "manifests": [top]}));
            oci.blob(index.clone());
            top = descriptor(OCI_INDEX, &index);
            top["platform"] = json!({"os": "linux", "architecture": "amd64"});
        }
        let bytes = oci.archive(vec![top]);
        expect_err(read(&bytes, ArchiveKind::Oci, None), &["nest more than 4"]);

        // The same, four deep, is fine.
        let mut oci = Oci::default();
        let manifest = oci.image("amd64", &[(TAR_LAYER, layer_tar("a", b"a"))]);
        let mut top = descriptor(OCI_MANIFEST, &manifest);
        for _ in 0..4 {
            let index = json_bytes(&json!({"schemaVersion": 2, "manifests": [top]}));
            oci.blob(index.clone());
            top = descriptor(OCI_INDEX, &index);
        }
        let image = read(&oci.archive(vec![top]), ArchiveKind::Oci, None).expect("4 deep");
        assert_eq!(image.image.manifest_digest, sha256(&manifest));
    }

    #[test]
    fn truncated_archive() {
        let layer = layer_tar("big", &[7; 4096]);
        let mut members = Vec::new();
        let entry = docker_image(&["x:1"], std::slice::from_ref(&layer), &mut members);
        let layer_member = members.remove(1);
        members.push(("manifest.json".to_owned(), json_bytes(&json!([entry]))));
        members.push(layer_member);
        let mut bytes = tar_of(&members);
        let end = bytes.len() - 1024 - layer.len() + 100;
        bytes.truncate(end);
        expect_err(
            read(&bytes, ArchiveKind::Docker, None),
            &["layer.tar", "past the end"],
        );
    }

    #[test]
    fn header_budget() {
        let temp = temp(&[0; 2048]);
        let file = File::open(temp.path()).expect("open");
        let mut reader = Budgeted {
            file: &file,
            left: 1000,
        };
        let mut buf = [0; 512];
        reader.read_exact(&mut buf).expect("first block");
        assert!(reader.read_exact(&mut buf).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            split_reference("localhost:5000/foo/bar:v1"),
            (
                Some("localhost:5000/foo/bar".to_owned()),
                Some("v1".to_owned())
            )
        );
        assert_eq!(
            split_reference("localhost:5000/foo"),
            (Some("localhost:5000/foo".to_owned()), None)
        );
        assert_eq!(
            split_reference(&format!("busybox:1@sha256:{}", "a".repeat(64))),
            (Some("busybox".to_owned()), Some("1".to_owned()))
        );
        assert_eq!(sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd");
        assert_eq!(sniff_compression(&[0x1f]), "none");
        assert_eq!(normalize_name(b"././blobs/"), b"blobs");
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn transports() {
        let ok = |arg: &str| {
            parse_transport(arg)
                .expect("a transport")
                .unwrap_or_else(|e| panic!("{arg}: {e}"))
        };
        assert_eq!(
            ok("oci-archive:img.tar"),
            (ArchiveKind::Oci, PathBuf::from("img.tar"), None)
        );
        assert_eq!(
            ok("oci-archive:/tmp/img.tar:v1"),
            (
                ArchiveKind::Oci,
                PathBuf::from("/tmp/img.tar"),
                Some("v1".to_owned())
            )
        );
        assert_eq!(
            ok("docker-archive:x.tar:docker.io/library/busybox:latest"),
            (
                ArchiveKind::Docker,
                PathBuf::from("x.tar"),
                Some("docker.io/library/busybox:latest".to_owned())
            )
        );
        assert_eq!(
            ok("docker-archive:x.tar:@1"),
            (
                ArchiveKind::Docker,
                PathBuf::from("x.tar"),
                Some("@1".to_owned())
            )
        );
        assert!(parse_transport("oci-archive:").expect("transport").is_err());
        assert!(
            parse_transport("docker-archive::tag")
                .expect("transport")
                .is_err()
        );
        assert!(
            parse_transport("oci-archive:x.tar:")
                .expect("transport")
                .is_err()
        );
        assert!(parse_transport("docker://busybox").is_none());
        assert!(parse_transport("/tmp/oci-archive:x").is_none());
        assert!(parse_transport("OCI-ARCHIVE:x").is_none());
    }
}

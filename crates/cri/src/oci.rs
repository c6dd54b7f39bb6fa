//! Deterministic OCI image archives (the `oci-archive` format that
//! `ctr images import` and `skopeo` read), built from an in-memory list of
//! file system entries.
//!
//! The archive is a tar of `oci-layout`, `index.json` and
//! `blobs/sha256/{layer, config, manifest}`. The single layer is an
//! uncompressed tar. Every timestamp is fixed and entries are sorted, so the
//! same inputs always give the same digests.

use std::collections::BTreeMap;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Fixed modification time for every tar entry (2000-01-01T00:00:00Z).
const MTIME: u64 = 946_684_800;

/// What a layer entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with its contents and permission bits (e.g. `0o755`).
    File { data: Vec<u8>, mode: u32 },
    /// A directory with its permission bits.
    Dir { mode: u32 },
    /// A symbolic link to `target` (relative or absolute).
    Symlink { target: String },
}

/// One file system entry of a layer. `path` is absolute or relative to the
/// root (`/bin/sh` and `bin/sh` are the same); missing parent directories
/// are added with mode 0755.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

impl Entry {
    /// A regular file.
    pub fn file(path: impl Into<String>, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                data: data.into(),
                mode,
            },
        }
    }
    /// A directory.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode },
        }
    }
    /// A symbolic link.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }
}

/// Everything that defines a single-layer image.
#[derive(Debug, Clone, Default)]
pub struct ImageDef {
    /// Full reference, e.g. `kobune.local/pause:1` (becomes the
    /// `io.containerd.image.name` annotation).
    pub name: String,
    pub entries: Vec<Entry>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// A built archive and the digests that identify it.
#[derive(Debug, Clone)]
pub struct OciArchive {
    /// The archive (a tar) to import.
    pub bytes: Vec<u8>,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the config; containerd's CRI image ID.
    pub config_digest: String,
    /// `sha256:…` of the (uncompressed) layer, also its diff ID.
    pub layer_digest: String,
}

fn sha256_digest(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    let out = h.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in out {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The OCI architecture name of the machine this is compiled for.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Minimal ustar writer.
struct TarWriter {
    out: Vec<u8>,
}

enum TarKind<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
}

impl TarWriter {
    fn new() -> Self {
        TarWriter { out: Vec::new() }
    }

    fn octal(field: &mut [u8], value: u64) {
        // width-1 octal digits, then NUL.
        let width = field.len() - 1;
        let s = format!("{value:0width$o}");
        field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
        field[width] = 0;
    }

    fn append(&mut self, path: &str, mode: u32, kind: TarKind<'_>) -> anyhow::Result<()> {
        let mut h = [0u8; 512];
        let (name, prefix) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        Self::octal(&mut h[100..108], u64::from(mode & 0o7777));
        Self::octal(&mut h[108..116], 0);
        Self::octal(&mut h[116..124], 0);
        let (size, flag) = match &kind {
            TarKind::File(d) => (d.len() as u64, b'0'),
            TarKind::Dir => (0, b'5'),
            TarKind::Symlink(_) => (0, b'2'),
        };
        Self::octal(&mut h[124..136], size);
        Self::octal(&mut h[136..148], MTIME);
        h[156] = flag;
        if let TarKind::Symlink(t) = &kind {
            anyhow::ensure!(t.len() <= 100, "symlink target too long: {t}");
            h[157..157 + t.len()].copy_from_slice(t.as_bytes());
        }
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        Self::octal(&mut h[329..337], 0);
        Self::octal(&mut h[337..345], 0);
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // Checksum: computed with the field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}");
        h[148..154].copy_from_slice(s.as_bytes());
        h[154] = 0;
        h[155] = b' ';
        self.out.extend_from_slice(&h);
        if let TarKind::File(d) = kind {
            self.out.extend_from_slice(d);
            let pad = (512 - d.len() % 512) % 512;
            self.out.resize(self.out.len() + pad, 0);
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// Splits a tar path into (name ≤ 100 bytes, prefix ≤ 155 bytes).
fn split_name(path: &str) -> anyhow::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok((path, ""));
    }
    for (i, c) in path.char_indices() {
        if c == '/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
            return Ok((&path[i + 1..], &path[..i]));
        }
    }
    anyhow::bail!("path too long for ustar: {path}")
}

fn normalise(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Builds the uncompressed layer tar: entries sorted by path, parents
/// created, later duplicates win.
pub fn build_layer(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut map: BTreeMap<String, &EntryKind> = BTreeMap::new();
    const DEFAULT_DIR: EntryKind = EntryKind::Dir { mode: 0o755 };
    for e in entries {
        let p = normalise(&e.path);
        anyhow::ensure!(!p.is_empty(), "empty path in layer entry");
        anyhow::ensure!(!p.split('/').any(|c| c == ".."), "`..` in layer path {p}");
        let parts: Vec<&str> = p.split('/').collect();
        for i in 1..parts.len() {
            map.entry(parts[..i].join("/")).or_insert(&DEFAULT_DIR);
        }
        map.insert(p, &e.kind);
    }
    let mut tar = TarWriter::new();
    for (path, kind) in &map {
        match kind {
            EntryKind::File { data, mode } => tar.append(path, *mode, TarKind::File(data))?,
            EntryKind::Dir { mode } => tar.append(&format!("{path}/"), *mode, TarKind::Dir)?,
            EntryKind::Symlink { target } => tar.append(path, 0o777, TarKind::Symlink(target))?,
        }
    }
    Ok(tar.finish())
}

/// One image's blobs and its `index.json` entry.
struct ImageBlobs {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index_entry: serde_json::Value,
    manifest_digest: String,
    config_digest: String,
    layer_digest: String,
}

fn image_blobs(def: &ImageDef) -> anyhow::Result<ImageBlobs> {
    let layer = build_layer(&def.entries)?;
    let layer_digest = sha256_digest(&layer);

    let mut cfg = serde_json::Map::new();
    if !def.env.is_empty() {
        cfg.insert("Env".into(), json!(def.env));
    }
    if let Some(ep) = &def.entrypoint {
        cfg.insert("Entrypoint".into(), json!(ep));
    }
    if let Some(cmd) = &def.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    if let Some(wd) = &def.working_dir {
        cfg.insert("WorkingDir".into(), json!(wd));
    }
    let config = json!({
        "created": "2000-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "kobune"}],
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256_digest(&config);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_digest(&manifest);

    let tag = def
        .name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| "latest".into());
    let index_entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {
            "io.containerd.image.name": def.name,
            "org.opencontainers.image.ref.name": tag,
        },
        "platform": {"architecture": oci_arch(), "os": "linux"},
    });
    Ok(ImageBlobs {
        layer,
        config,
        manifest,
        index_entry,
        manifest_digest,
        config_digest,
        layer_digest,
    })
}

/// Packs images into one archive: blobs shared between images are stored
/// once, and `index.json` lists every image in the given order.
fn pack(images: &[ImageBlobs]) -> anyhow::Result<Vec<u8>> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": images.iter().map(|i| i.index_entry.clone()).collect::<Vec<_>>(),
    });
    let index = serde_json::to_vec(&index)?;
    let mut blobs: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for i in images {
        blobs.insert(&i.layer_digest, &i.layer);
        blobs.insert(&i.config_digest, &i.config);
        blobs.insert(&i.manifest_digest, &i.manifest);
    }
    let mut tar = TarWriter::new();
    tar.append("blobs/", 0o755, TarKind::Dir)?;
    tar.append("blobs/sha256/", 0o755, TarKind::Dir)?;
    for (digest, data) in blobs {
        let hex = digest.trim_start_matches("sha256:");
        tar.append(&format!("blobs/sha256/{hex}"), 0o644, TarKind::File(data))?;
    }
    tar.append("index.json", 0o644, TarKind::File(&index))?;
    tar.append(
        "oci-layout",
        0o644,
        TarKind::File(br#"{"imageLayoutVersion":"1.0.0"}"#),
    )?;
    Ok(tar.finish())
}

/// Builds the whole OCI archive for one image.
pub fn build_archive(def: &ImageDef) -> anyhow::Result<OciArchive> {
    let b = image_blobs(def)?;
    Ok(OciArchive {
        bytes: pack(std::slice::from_ref(&b))?,
        manifest_digest: b.manifest_digest,
        config_digest: b.config_digest,
        layer_digest: b.layer_digest,
    })
}

/// Builds one OCI archive holding several images (one `ctr images import`
/// imports them all). Returns the archive and each image's digests (with
/// `bytes` left empty).
pub fn build_multi_archive(defs: &[ImageDef]) -> anyhow::Result<(Vec<u8>, Vec<OciArchive>)> {
    let blobs = defs
        .iter()
        .map(image_blobs)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = pack(&blobs)?;
    let digests = blobs
        .into_iter()
        .map(|b| OciArchive {
            bytes: vec![],
            manifest_digest: b.manifest_digest,
            config_digest: b.config_digest,
            layer_digest: b.layer_digest,
        })
        .collect();
    Ok((bytes, digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ImageDef {
        ImageDef {
            name: "kobune.local/test:1".into(),
            entries: vec![
                Entry::file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n".to_vec()),
                Entry::symlink("/bin/hi", "hello"),
                Entry::dir("/tmp", 0o1777),
            ],
            entrypoint: Some(vec!["/bin/hello".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn deterministic() {
        let a = build_archive(&def()).unwrap();
        let b = build_archive(&def()).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.bytes, b.bytes);
        let mut d = def();
        d.entries.reverse();
        assert_eq!(
            build_archive(&d).unwrap().manifest_digest,
            a.manifest_digest
        );
        d.cmd = Some(vec!["x".into()]);
        assert_ne!(
            build_archive(&d).unwrap().manifest_digest,
            a.manifest_digest
        );
    }

    #[test]
    fn layer_is_valid_tar() {
        let layer = build_layer(&def().entries).unwrap();
        assert_eq!(layer.len() % 512, 0);
        // The first header is `bin/` (a parent added automatically).
        assert_eq!(&layer[..4], b"bin/");
        assert_eq!(layer[156], b'5');
        assert_eq!(&layer[257..263], b"ustar\0");
        // Verify every header's checksum by walking the archive.
        let mut off = 0;
        let mut names = vec![];
        while off + 512 <= layer.len() && layer[off] != 0 {
            let h = &layer[off..off + 512];
            let mut sum: u64 = 0;
            for (i, b) in h.iter().enumerate() {
                sum += if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                };
            }
            let stored =
                u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
            assert_eq!(sum, stored);
            let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            names.push(String::from_utf8(h[..name_end].to_vec()).unwrap());
            let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
            off += 512 + (size as usize).div_ceil(512) * 512;
        }
        assert_eq!(names, ["bin/", "bin/hello", "bin/hi", "tmp/"]);
    }

    #[test]
    fn long_names_use_prefix() {
        let long = format!("{}/{}", "a".repeat(80), "b".repeat(60));
        let (n, p) = split_name(&long).unwrap();
        assert_eq!(n, "b".repeat(60));
        assert_eq!(p, "a".repeat(80));
    }

    #[test]
    fn multi_archive_shares_blobs() {
        let a = def();
        let mut b = def();
        b.name = "kobune.local/test:2".into();
        b.env = vec!["VERSION=2".into()];
        let (bytes, digests) = build_multi_archive(&[a.clone(), b]).unwrap();
        assert_eq!(digests.len(), 2);
        assert_eq!(digests[0].layer_digest, digests[1].layer_digest);
        assert_ne!(digests[0].config_digest, digests[1].config_digest);
        let single = build_archive(&a).unwrap();
        assert_eq!(single.manifest_digest, digests[0].manifest_digest);
        // The shared layer is stored once: the multi archive is smaller
        // than two single ones.
        assert!(bytes.len() < 2 * single.bytes.len());
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("kobune.local/test:1") && text.contains("kobune.local/test:2"));
    }
}

//! The built-in images, built on the fly and imported into containerd, so
//! that pods run with no registry: `kobune.local/pause:1` (the sandbox
//! image), `kobune.local/busybox:1` (from the host's busybox-static) and
//! the test web application `kobune.local/webapp:v1` / `:v2` (a static
//! binary built from `webapp.rs`; the tags differ only in `VERSION`).
//!
//! Also: registry credentials from `imagePullSecrets` (docker config JSON to
//! CRI `AuthConfig`), pulls that try them, and what `kobune images`
//! does (import, list, export through the node's containerd).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;

use crate::client::{image_spec, Cri};
use crate::oci::{build_archive, build_multi_archive, Entry, ImageDef, OciArchive};
use k8s_cri::v1 as cri;
/// CRI registry credentials.
pub use k8s_cri::v1::AuthConfig;

/// The sandbox (pause) image name.
pub const PAUSE_IMAGE: &str = "kobune.local/pause:1";
/// The busybox image name.
pub const BUSYBOX_IMAGE: &str = "kobune.local/busybox:1";
/// The test web application, version v1.
pub const WEBAPP_V1_IMAGE: &str = "kobune.local/webapp:v1";
/// The test web application, version v2 (same binary, `VERSION=v2`).
pub const WEBAPP_V2_IMAGE: &str = "kobune.local/webapp:v2";
/// Every built-in image, imported at node start.
pub const BUILTIN_IMAGES: &[&str] = &[PAUSE_IMAGE, BUSYBOX_IMAGE, WEBAPP_V1_IMAGE, WEBAPP_V2_IMAGE];
/// Where the host's static busybox is read from.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The static pause binary compiled by build.rs.
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The static test web application compiled by build.rs from `webapp.rs`.
pub static WEBAPP_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/webapp"));

/// Applets linked in `/bin` of the busybox image.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "wget", "nc", "httpd", "env", "ps", "kill", "mkdir", "rm",
    "grep", "date", "hostname", "ip", "nslookup", "true", "false", "tail", "head", "touch", "id",
    "whoami", "seq", "tar", "cp", "mv", "sed", "wc", "find", "chmod",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The files the runtime mounts over in every container (CRI's
/// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`). Shipped empty in the
/// image, so that starting a container does not create them (and their
/// directories) in its writable layer: on this disk that is the costliest
/// part of a container's file system setup.
fn mount_targets() -> Vec<Entry> {
    ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
        .into_iter()
        .map(|p| Entry::file(p, 0o644, Vec::new()))
        .collect()
}

/// The pause image definition: the binary, plus the mount points runc
/// would otherwise create.
pub fn pause_image() -> ImageDef {
    let mut entries = vec![
        Entry::file("/pause", 0o755, PAUSE_BINARY.to_vec()),
        Entry::dir("/proc", 0o555),
        Entry::dir("/sys", 0o555),
        Entry::dir("/dev", 0o755),
        Entry::dir("/etc", 0o755),
    ];
    entries.extend(mount_targets());
    ImageDef {
        name: PAUSE_IMAGE.into(),
        entries,
        entrypoint: Some(vec!["/pause".into()]),
        env: vec![PATH_ENV.into()],
        ..Default::default()
    }
}

/// The busybox image definition, from the given static busybox binary.
pub fn busybox_image(busybox: Vec<u8>) -> ImageDef {
    let mut entries = vec![
        Entry::file("/bin/busybox", 0o755, busybox),
        Entry::dir("/tmp", 0o1777),
        Entry::dir("/root", 0o700),
        Entry::dir("/proc", 0o555),
        Entry::dir("/sys", 0o555),
        Entry::dir("/dev", 0o755),
        Entry::dir("/var", 0o755),
        Entry::dir("/etc", 0o755),
        Entry::file(
            "/etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        Entry::file(
            "/etc/group",
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        ),
    ];
    entries.extend(mount_targets());
    for applet in BUSYBOX_APPLETS {
        entries.push(Entry::symlink(format!("/bin/{applet}"), "busybox"));
    }
    ImageDef {
        name: BUSYBOX_IMAGE.into(),
        entries,
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
        env: vec![PATH_ENV.into()],
        working_dir: None,
    }
}

/// The test web application image `name` whose `VERSION` is `version`.
/// It listens on 8080 (`PORT`) with 4 workers (`WORKERS`).
pub fn webapp_image(name: &str, version: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        entries: vec![
            Entry::file("/webapp", 0o755, WEBAPP_BINARY.to_vec()),
            Entry::dir("/tmp", 0o1777),
            Entry::dir("/proc", 0o555),
            Entry::dir("/sys", 0o555),
            Entry::dir("/dev", 0o755),
            Entry::dir("/etc", 0o755),
            Entry::file(
                "/etc/passwd",
                0o644,
                b"root:x:0:0:root:/:/webapp\nnobody:x:65534:65534:nobody:/:/webapp\n".to_vec(),
            ),
        ]
        .into_iter()
        .chain(mount_targets())
        .collect(),
        entrypoint: Some(vec!["/webapp".into()]),
        cmd: None,
        env: vec![
            PATH_ENV.into(),
            format!("VERSION={version}"),
            "PORT=8080".into(),
            "WORKERS=4".into(),
            "DRAIN_SECONDS=5".into(),
        ],
        working_dir: Some("/".into()),
    }
}

/// The definition of built-in image `name`, if it is one. Busybox needs the
/// host's `/bin/busybox`.
pub fn builtin_image(name: &str) -> anyhow::Result<Option<ImageDef>> {
    Ok(match name {
        PAUSE_IMAGE => Some(pause_image()),
        BUSYBOX_IMAGE => {
            let busybox = std::fs::read(HOST_BUSYBOX).with_context(|| {
                format!("reading {HOST_BUSYBOX} (Debian: apt-get install busybox-static)")
            })?;
            Some(busybox_image(busybox))
        }
        WEBAPP_V1_IMAGE => Some(webapp_image(name, "v1")),
        WEBAPP_V2_IMAGE => Some(webapp_image(name, "v2")),
        _ => None,
    })
}

/// Builds every built-in image archive. Fails if the host has no
/// `/bin/busybox`.
pub fn builtin_archives() -> anyhow::Result<Vec<(String, OciArchive)>> {
    BUILTIN_IMAGES
        .iter()
        .map(|name| {
            let def = builtin_image(name)?.expect("built-in image definition");
            Ok((name.to_string(), build_archive(&def)?))
        })
        .collect()
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Imports one OCI archive file with `ctr … images import`.
pub async fn ctr_import(socket: &Path, archive: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
        .arg(archive)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running ctr (it ships with containerd)")?;
    anyhow::ensure!(
        out.status.success(),
        "ctr images import {} failed ({}): {}",
        archive.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Imports the built-in images into the `k8s.io` namespace of the
/// containerd at `socket`, skipping those already present (CRI
/// `ImageStatus`). Returns the names actually imported. All missing images
/// go in one archive and one `ctr images import` (each `ctr` run costs
/// about 100 ms; parallel runs contend and are slower).
pub async fn import_builtin_images(socket: &Path) -> anyhow::Result<Vec<String>> {
    let cri = Cri::connect(socket).await?;
    let mut missing = vec![];
    for &name in BUILTIN_IMAGES {
        if cri.image_status(name).await?.is_none() {
            missing.push(name.to_string());
        }
    }
    if missing.is_empty() {
        return Ok(vec![]);
    }
    let started = Instant::now();
    let wanted = missing.clone();
    let (bytes, digests) = tokio::task::spawn_blocking(move || {
        let defs = wanted
            .iter()
            .map(|name| Ok(builtin_image(name)?.expect("built-in image definition")))
            .collect::<anyhow::Result<Vec<ImageDef>>>()?;
        build_multi_archive(&defs)
    })
    .await??;
    let file = std::env::temp_dir().join(format!(
        "kobune-images-{}-{}-{}.tar",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        &digests[0].manifest_digest[7..19]
    ));
    tokio::fs::write(&file, &bytes).await?;
    let res = ctr_import(socket, &file).await;
    let _ = tokio::fs::remove_file(&file).await;
    res?;
    for name in &missing {
        anyhow::ensure!(
            cri.image_status(name).await?.is_some(),
            "{name} imported but CRI does not see it"
        );
    }
    tracing::info!(
        images = %missing.join(" "),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "imported built-in images"
    );
    Ok(missing)
}

/// The registry host of an image reference (`docker.io` when the first
/// path component is not a host), and the repository path within it.
pub fn split_reference(image: &str) -> (String, String) {
    let name = image.split('@').next().unwrap_or(image);
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
            (f.to_lowercase(), r)
        }
        Some(_) => ("docker.io".to_string(), name),
        None => ("docker.io".to_string(), name),
    };
    // Drop the tag (a `:` after the last `/`).
    let repo = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => rest,
    };
    let repo = if first == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    (first, repo)
}

fn canonical_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        h => h.to_string(),
    }
}

/// Whether a docker config key (`https://host:port/v1/`, `host`,
/// `*.example.com`, `host/path`) covers the image's `host` and `repo`.
fn key_matches(key: &str, host: &str, repo: &str) -> bool {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (khost, kpath) = k.split_once('/').unwrap_or((k, ""));
    let khost = canonical_host(&khost.to_lowercase());
    let host = canonical_host(host);
    let host_ok = if khost.contains('*') {
        let (kh, kport) = khost.split_once(':').unwrap_or((&khost, ""));
        let (h, port) = host.split_once(':').unwrap_or((&host, ""));
        let kparts: Vec<&str> = kh.split('.').collect();
        let parts: Vec<&str> = h.split('.').collect();
        kport == port
            && kparts.len() == parts.len()
            && kparts.iter().zip(&parts).all(|(k, p)| glob(k, p))
    } else {
        khost == host
    };
    // Docker Hub's legacy `/v1/` key path says nothing about repositories.
    let kpath = kpath.trim_end_matches('/');
    let kpath = if kpath == "v1" || kpath == "v2" {
        ""
    } else {
        kpath
    };
    host_ok && (kpath.is_empty() || repo == kpath || repo.starts_with(&format!("{kpath}/")))
}

/// `*` matches any run of characters within one host component.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, post)) => {
            s.starts_with(pre)
                && (pre.len()..=s.len()).any(|i| s.is_char_boundary(i) && glob(post, &s[i..]))
        }
    }
}

/// The credentials in a docker config (`.dockerconfigjson`, with `auths`,
/// or the legacy `.dockercfg` map) that apply to `image`, most specific key
/// first.
pub fn auths_for_image(docker_config: &serde_json::Value, image: &str) -> Vec<cri::AuthConfig> {
    let map = docker_config
        .get("auths")
        .and_then(serde_json::Value::as_object)
        .or_else(|| docker_config.as_object());
    let Some(map) = map else { return vec![] };
    let (host, repo) = split_reference(image);
    let mut found: Vec<(&String, cri::AuthConfig)> = map
        .iter()
        .filter(|(k, v)| v.is_object() && key_matches(k, &host, &repo))
        .map(|(k, v)| {
            let field = |f: &str| v.get(f).and_then(serde_json::Value::as_str).unwrap_or("");
            (
                k,
                cri::AuthConfig {
                    username: field("username").into(),
                    password: field("password").into(),
                    auth: field("auth").into(),
                    // Left empty: containerd 1.6 wants a URL here and then
                    // withholds the credentials from mirrors and from
                    // registry-1.docker.io; the key already matched the image.
                    server_address: String::new(),
                    identity_token: field("identitytoken").into(),
                    registry_token: field("registrytoken").into(),
                },
            )
        })
        .collect();
    found.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    found.into_iter().map(|(_, a)| a).collect()
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The image reference containerd resolved (its ID).
    pub image_ref: String,
    /// Size in bytes as CRI reports it.
    pub size: u64,
}

/// CRI `PullImage` as the kubelet does it: with no credentials once
/// anonymously, else with each credential in turn until one works (the
/// last error is returned).
pub async fn pull(cri: &Cri, image: &str, auths: &[cri::AuthConfig]) -> anyhow::Result<Pulled> {
    let attempts: Vec<Option<cri::AuthConfig>> = if auths.is_empty() {
        vec![None]
    } else {
        auths.iter().cloned().map(Some).collect()
    };
    let mut last = None;
    for auth in attempts {
        let req = cri::PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        };
        match cri.images.clone().pull_image(req).await {
            Ok(r) => {
                let image_ref = r.into_inner().image_ref;
                let size = cri
                    .image_status(image)
                    .await?
                    .map(|i| i.size)
                    .unwrap_or_default();
                return Ok(Pulled { image_ref, size });
            }
            Err(status) => last = Some(status),
        }
    }
    let status = last.expect("at least one attempt");
    Err(anyhow::anyhow!("{}", status.message()))
}

/// Makes sure `image` is present per the pull `policy` (`Always`,
/// `IfNotPresent`, `Never`), pulling with `auths`. `Ok(None)`: it was
/// already present and not pulled. With `Always`, a failed pull falls back
/// to a local copy (the node may be offline; built-in images are in no
/// registry).
pub async fn ensure(
    cri: &Cri,
    image: &str,
    policy: &str,
    auths: &[cri::AuthConfig],
) -> anyhow::Result<Option<Pulled>> {
    let local = cri.image_status(image).await?;
    match (policy, local) {
        ("Always", local) => match pull(cri, image, auths).await {
            Ok(p) => Ok(Some(p)),
            Err(e) => match local {
                Some(_) => {
                    tracing::warn!(image, error = %e, "pull failed; using the local image");
                    Ok(None)
                }
                None => Err(e),
            },
        },
        (_, Some(_)) => Ok(None),
        ("Never", None) => anyhow::bail!(
            "ErrImageNeverPull: image {image} is not present and imagePullPolicy is Never"
        ),
        (_, None) => pull(cri, image, auths).await.map(Some),
    }
}

/// Imports image archives (OCI or docker-archive tars) into the `k8s.io`
/// namespace of the containerd at `socket`; returns the image names each
/// archive contained.
pub async fn import_files(
    socket: &Path,
    files: &[std::path::PathBuf],
) -> anyhow::Result<Vec<String>> {
    let mut names = vec![];
    for f in files {
        anyhow::ensure!(f.is_file(), "{}: no such file", f.display());
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
            .arg(f)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running ctr (it ships with containerd)")?;
        anyhow::ensure!(
            out.status.success(),
            "importing {} failed ({}): {}",
            f.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let before = names.len();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `unpacking NAME (sha256:…)...done`
            if let Some(rest) = line.trim().strip_prefix("unpacking ") {
                if let Some(name) = rest.split(" (").next() {
                    names.push(name.to_string());
                }
            }
        }
        anyhow::ensure!(
            names.len() > before,
            "{}: the archive names no image (an OCI archive needs the \
             io.containerd.image.name or org.opencontainers.image.ref.name annotation)",
            f.display()
        );
    }
    Ok(names)
}

/// Writes the named images to `file` as one OCI archive (with a Docker
/// `manifest.json`, so `docker load` reads it too).
pub async fn export(socket: &Path, file: &Path, images: &[String]) -> anyhow::Result<()> {
    let cri = Cri::connect(socket).await?;
    for i in images {
        anyhow::ensure!(
            cri.image_status(i).await?.is_some(),
            "image {i} is not present on this node"
        );
    }
    let out = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "export"])
        .arg(file)
        .args(images)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running ctr (it ships with containerd)")?;
    anyhow::ensure!(
        out.status.success(),
        "exporting to {} failed ({}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Sizes as `crictl images` prints them (decimal units, 3 significant
/// digits).
pub fn human_size(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = size as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// The `kobune images ls` table: one row per repository tag (untagged
/// images as `<none>`), like `crictl images`.
pub fn images_table(images: &[cri::Image]) -> String {
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    ]];
    let mut body = vec![];
    for img in images {
        let id: String = img
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect();
        let size = human_size(img.size);
        let mut tags: Vec<(String, String)> = img
            .repo_tags
            .iter()
            .map(|t| match t.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => (r.to_string(), tag.to_string()),
                _ => (t.clone(), "<none>".to_string()),
            })
            .collect();
        if tags.is_empty() {
            let repo = img
                .repo_digests
                .first()
                .and_then(|d| d.split('@').next())
                .unwrap_or("<none>");
            tags.push((repo.to_string(), "<none>".to_string()));
        }
        for (r, t) in tags {
            body.push([r, t, id.clone(), size.clone()]);
        }
    }
    body.sort();
    rows.extend(body);
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:<w0$}   {:<w1$}   {:<w2$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// CRI `RemoveImage` for each name (as `crictl rmi`); an image that is
/// not present is an error.
pub async fn remove(socket: &Path, images: &[String]) -> anyhow::Result<()> {
    let cri = Cri::connect(socket).await?;
    for i in images {
        anyhow::ensure!(
            cri.image_status(i).await?.is_some(),
            "image {i} is not present on this node"
        );
        cri.images
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(image_spec(i)),
            })
            .await
            .with_context(|| format!("CRI RemoveImage {i}"))?;
    }
    Ok(())
}

/// CRI `ListImages` of the runtime at `socket`.
pub async fn list(socket: &Path) -> anyhow::Result<Vec<cri::Image>> {
    let cri = Cri::connect(socket).await?;
    let resp = cri
        .images
        .clone()
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .context("CRI ListImages")?;
    Ok(resp.into_inner().images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_binary_is_static_elf() {
        assert_eq!(&PAUSE_BINARY[..4], b"\x7fELF");
        let a = build_archive(&pause_image()).unwrap();
        let b = build_archive(&pause_image()).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
    }

    #[test]
    fn images_carry_the_runtime_mount_targets() {
        let has = |def: &ImageDef, path: &str| def.entries.iter().any(|e| e.path == path);
        for def in [
            pause_image(),
            busybox_image(b"fake".to_vec()),
            webapp_image("w", "1"),
        ] {
            for p in [
                "/proc",
                "/sys",
                "/dev",
                "/etc",
                "/etc/hosts",
                "/etc/resolv.conf",
            ] {
                assert!(has(&def, p), "{} lacks {p}", def.name);
            }
        }
    }

    #[test]
    fn busybox_image_has_applets() {
        let def = busybox_image(b"fake".to_vec());
        assert!(def
            .entries
            .iter()
            .any(|e| e.path == "/bin/sh" && matches!(&e.kind, crate::oci::EntryKind::Symlink { target } if target == "busybox")));
        assert_eq!(def.cmd.as_deref(), Some(&["sh".to_string()][..]));
    }

    #[test]
    fn webapp_binary_is_static_and_images_differ_by_version() {
        let elf = WEBAPP_BINARY;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "64-bit ELF");
        // No PT_INTERP program header: nothing to load at run time.
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let p_type = u32::from_le_bytes(
                elf[phoff + i * phentsize..phoff + i * phentsize + 4]
                    .try_into()
                    .unwrap(),
            );
            assert_ne!(p_type, 3, "webapp has an ELF interpreter: not static");
        }
        let v1 = build_archive(&webapp_image(WEBAPP_V1_IMAGE, "v1")).unwrap();
        let v1b = build_archive(&webapp_image(WEBAPP_V1_IMAGE, "v1")).unwrap();
        let v2 = build_archive(&webapp_image(WEBAPP_V2_IMAGE, "v2")).unwrap();
        assert_eq!(v1.manifest_digest, v1b.manifest_digest);
        assert_eq!(v1.layer_digest, v2.layer_digest);
        assert_ne!(v1.config_digest, v2.config_digest);
        assert!(webapp_image("x", "v2")
            .env
            .contains(&"VERSION=v2".to_string()));
    }

    #[test]
    fn references_split_into_host_and_repo() {
        assert_eq!(
            split_reference("busybox"),
            ("docker.io".into(), "library/busybox".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/webapp:v1"),
            ("127.0.0.1:5000".into(), "team/webapp".into())
        );
        assert_eq!(
            split_reference("registry.example.test/webapp@sha256:abc"),
            ("registry.example.test".into(), "webapp".into())
        );
        assert_eq!(
            split_reference("localhost/x:1"),
            ("localhost".into(), "x".into())
        );
    }

    #[test]
    fn docker_config_credentials_match_like_the_kubelet() {
        let cfg = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"username": "u", "password": "p"},
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "*.example.test": {"username": "wild", "password": "w"},
            "reg.example.test/team": {"username": "team", "password": "t"},
        }});
        let a = auths_for_image(&cfg, "127.0.0.1:5000/webapp:v1");
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].username.as_str(), a[0].password.as_str()), ("u", "p"));
        assert!(auths_for_image(&cfg, "127.0.0.1:5001/webapp:v1").is_empty());
        assert_eq!(auths_for_image(&cfg, "nginx:1")[0].auth, "dTpw");
        let a = auths_for_image(&cfg, "reg.example.test/team/app:1");
        let users: Vec<&str> = a.iter().map(|a| a.username.as_str()).collect();
        assert_eq!(users, ["team", "wild"]);
        let a = auths_for_image(&cfg, "reg.example.test/other/app:1");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].username, "wild");
        assert!(auths_for_image(&cfg, "a.b.example.test/x").is_empty());
        // Legacy .dockercfg: the map itself.
        let legacy = serde_json::json!({"quay.io": {"username": "q", "password": "x"}});
        assert_eq!(auths_for_image(&legacy, "quay.io/a/b")[0].username, "q");
    }

    #[test]
    fn sizes_and_table_like_crictl() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(676_000), "676kB");
        assert_eq!(human_size(1_470_024), "1.47MB");
        assert_eq!(human_size(12_000_000), "12MB");
        let imgs = vec![
            cri::Image {
                id: "sha256:0123456789abcdef0123".into(),
                repo_tags: vec![
                    "kobune.local/webapp:v1".into(),
                    "kobune.local/webapp:v2".into(),
                ],
                size: 1_470_024,
                ..Default::default()
            },
            cri::Image {
                id: "sha256:fedcba9876543210".into(),
                repo_digests: vec!["127.0.0.1:5000/x@sha256:aa".into()],
                size: 100,
                ..Default::default()
            },
        ];
        let t = images_table(&imgs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("REPOSITORY"));
        assert!(lines[0].contains("   TAG   ") && lines[0].ends_with("SIZE"));
        assert!(lines[1].starts_with("127.0.0.1:5000/x ") && lines[1].contains("<none>"));
        assert!(
            lines[2].contains(" v1 ")
                && lines[2].contains("0123456789abc ")
                && lines[2].ends_with("1.47MB")
        );
        assert!(lines[3].contains(" v2 "));
    }
}

/// The web application's own unit tests (request parsing and handling,
/// keep-alive), run as part of this crate's tests.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../webapp.rs"]
mod webapp;

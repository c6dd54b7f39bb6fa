//! The built-in images, built on the fly and imported into containerd, so
//! that pods run with no registry: `kobune.local/pause:1` (the sandbox
//! image) and `kobune.local/busybox:1` (from the host's busybox-static).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;

use crate::client::Cri;
use crate::oci::{build_archive, Entry, ImageDef, OciArchive};

/// The sandbox (pause) image name.
pub const PAUSE_IMAGE: &str = "kobune.local/pause:1";
/// The busybox image name.
pub const BUSYBOX_IMAGE: &str = "kobune.local/busybox:1";
/// Where the host's static busybox is read from.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The static pause binary compiled by build.rs.
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// Applets linked in `/bin` of the busybox image.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "wget", "nc", "httpd", "env", "ps", "kill", "mkdir", "rm",
    "grep", "date", "hostname", "ip", "nslookup", "true", "false", "tail", "head", "touch", "id",
    "whoami", "seq",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pause image definition.
pub fn pause_image() -> ImageDef {
    ImageDef {
        name: PAUSE_IMAGE.into(),
        entries: vec![Entry::file("/pause", 0o755, PAUSE_BINARY.to_vec())],
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

/// Builds both built-in image archives. Fails if the host has no
/// `/bin/busybox`.
pub fn builtin_archives() -> anyhow::Result<Vec<(String, OciArchive)>> {
    let busybox = std::fs::read(HOST_BUSYBOX).with_context(|| {
        format!("reading {HOST_BUSYBOX} (Debian: apt-get install busybox-static)")
    })?;
    Ok(vec![
        (PAUSE_IMAGE.to_string(), build_archive(&pause_image())?),
        (
            BUSYBOX_IMAGE.to_string(),
            build_archive(&busybox_image(busybox))?,
        ),
    ])
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
/// `ImageStatus`). Returns the names actually imported.
pub async fn import_builtin_images(socket: &Path) -> anyhow::Result<Vec<String>> {
    let cri = Cri::connect(socket).await?;
    let mut imported = vec![];
    let mut archives = None;
    for name in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        if cri.image_status(name).await?.is_some() {
            continue;
        }
        if archives.is_none() {
            archives = Some(tokio::task::spawn_blocking(builtin_archives).await??);
        }
        let (_, archive) = archives
            .as_ref()
            .and_then(|a| a.iter().find(|(n, _)| n == name))
            .expect("archive for every built-in name");
        let started = Instant::now();
        let dir = std::env::temp_dir();
        let file = dir.join(format!(
            "kobune-image-{}-{}-{}.tar",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            &archive.manifest_digest[7..19]
        ));
        tokio::fs::write(&file, &archive.bytes).await?;
        let res = ctr_import(socket, &file).await;
        let _ = tokio::fs::remove_file(&file).await;
        res?;
        anyhow::ensure!(
            cri.image_status(name).await?.is_some(),
            "{name} imported but CRI does not see it"
        );
        tracing::info!(
            image = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "imported built-in image"
        );
        imported.push(name.to_string());
    }
    Ok(imported)
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
    fn busybox_image_has_applets() {
        let def = busybox_image(b"fake".to_vec());
        assert!(def
            .entries
            .iter()
            .any(|e| e.path == "/bin/sh" && matches!(&e.kind, crate::oci::EntryKind::Symlink { target } if target == "busybox")));
        assert_eq!(def.cmd.as_deref(), Some(&["sh".to_string()][..]));
    }
}

//! Compiles the static pause binary (`pause.c`) that becomes the sandbox
//! image `kobune.local/pause:1`, and the static test web application
//! (`webapp.rs`, std only) of the images `kobune.local/webapp:v1`/`v2`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause.c");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=webapp.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("pause.c");
    let bin = out.join("pause");
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "kobune-cri: `gcc -static -Os -s pause.c` failed ({s}); a C compiler with static libc \
             (Debian: apt-get install gcc libc6-dev) is needed to build the pause image"
        ),
        Err(e) => panic!(
            "kobune-cri: cannot run gcc ({e}); gcc with static libc (Debian: apt-get install gcc \
             libc6-dev) is needed to build the pause image"
        ),
    }
    build_webapp(&out);
}

/// `rustc -O -C target-feature=+crt-static webapp.rs`: a self-contained
/// static (static-pie) executable that needs nothing from the image.
fn build_webapp(out: &std::path::Path) {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let bin = out.join("webapp");
    let mut cmd = Command::new(&rustc);
    cmd.args([
        "--edition",
        "2021",
        "-O",
        "-C",
        "target-feature=+crt-static",
    ])
    .args(["-C", "strip=symbols", "-C", "codegen-units=1"])
    .arg(format!("--remap-path-prefix={}=/kobune", dir.display()))
    .arg("-o")
    .arg(&bin)
    .arg(dir.join("webapp.rs"));
    if let (Ok(target), Ok(host)) = (std::env::var("TARGET"), std::env::var("HOST")) {
        if target != host {
            cmd.args(["--target", &target]);
        }
    }
    // Cargo's flags for the crate being built do not apply to this program.
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("kobune-cri: `{rustc} -C target-feature=+crt-static webapp.rs` failed ({s}); static glibc (Debian: libc6-dev) is needed"),
        Err(e) => panic!("kobune-cri: cannot run {rustc} ({e})"),
    }
}

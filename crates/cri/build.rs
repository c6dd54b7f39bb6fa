//! Compiles the static pause binary (`pause.c`) that becomes the sandbox
//! image `kobune.local/pause:1`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause.c");
    println!("cargo:rerun-if-changed=build.rs");
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
}

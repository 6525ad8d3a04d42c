//! Rebuild when what `sluice new` embeds changes (include_dir! does not
//! tell cargo on stable Rust).

fn main() {
    for dir in [
        "../../templates",
        "../../wit",
        "../../sdk/js/src",
        "../../sdk/python/sluice_sdk",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
}

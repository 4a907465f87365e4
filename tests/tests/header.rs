//! `preload/include/heapkeep.h` is what cbindgen generates from the C
//! library's sources today. Run with `HEAPKEEP_BLESS=1` to rewrite it.

use std::path::Path;

#[test]
fn heapkeep_h_is_generated_from_the_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crate_dir = root.join("preload");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed on preload/");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = crate_dir.join("include").join("heapkeep.h");
    if std::env::var_os("HEAPKEEP_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date; regenerate it with HEAPKEEP_BLESS=1 cargo test --test header\n\
         --- generated ---\n{generated}",
        path.display()
    );
    for name in [
        "heapkeep_stats_t",
        "heapkeep_stats(",
        "heapkeep_version",
        "peak_live_bytes",
    ] {
        assert!(generated.contains(name), "heapkeep.h lacks {name}");
    }
}

//! Replays the checked-in fuzz corpus and crash reproducers
//! (`fuzz/corpus/<target>/*`, `fuzz/artifacts/<target>/*`) through the fuzz
//! targets' bodies (`synproxy_tests::fuzz`), so `cargo test` covers them
//! without libFuzzer or nightly.

use std::path::{Path, PathBuf};
use synproxy_tests::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files directly in `dir` (none if it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_and_reproducer_passes_its_target() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: the corpus is checked in"
        );
        let artifacts = files(&fuzz_dir().join("artifacts").join(name));
        for file in corpus.iter().chain(&artifacts) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {name} fails on {} (reproduce: cargo xtask fuzz --target {name} --reproduce {})",
                file.display(),
                file.display()
            );
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} fuzz inputs");
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("fuzz/Cargo.toml: {e}"));
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        let wrapper = fuzz_dir().join(format!("fuzz_targets/{name}.rs"));
        assert!(wrapper.is_file(), "{} missing", wrapper.display());
    }
}

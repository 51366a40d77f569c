//! The corpus's release pairs (`tests/bench/corpus-pairs.mjs`), as fetched into `target/corpus/`
//! by `node tests/bench/corpus.mjs`, for the benchmarks that read them.

use std::path::PathBuf;

/// One pair: its label, and the old and new file if they have been fetched.
pub struct Pair {
    pub label: String,
    pub bytes: Option<(Vec<u8>, Vec<u8>)>,
}

/// The pairs of files whose names `keep` keeps, in the corpus's order.
pub fn pairs(keep: impl Fn(&str) -> bool) -> Vec<Pair> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pairs =
        std::fs::read_to_string(repo.join("tests/bench/corpus-pairs.mjs")).expect("the corpus's pairs");
    let mut out = Vec::new();
    for line in pairs.lines().filter(|l| l.trim_start().starts_with("[\"")) {
        let pair: Vec<String> = serde_json::from_str(line.trim().trim_end_matches(',')).expect("a pair");
        let [label, pkg, from, to, file] = &pair[..] else { panic!("a pair of five fields: {line}") };
        if !keep(file) {
            continue;
        }
        let read = |version: &str| {
            let dir = repo.join("target/corpus").join(format!("{}@{version}", pkg.replace('/', "_")));
            std::fs::read(dir.join(file)).ok()
        };
        let bytes = read(from).zip(read(to));
        out.push(Pair { label: label.clone(), bytes });
    }
    out
}

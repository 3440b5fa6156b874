//! Test support: an index loaded from the captured apiserver objects in
//! tests/fixtures/kubernetes/, plus manifests a test writes itself.

use crate::{files::parse_manifests, index::Index, MeshConfig};

/// The `fixtures` (file names) and `extra` manifests (YAML), all of which
/// must parse without a problem, as one index.
pub fn index(fixtures: &[&str], extra: &[&str]) -> Index {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes");
    let cfg = MeshConfig::default();
    let texts = fixtures
        .iter()
        .map(|name| (*name, std::fs::read_to_string(dir.join(name)).expect("fixture")))
        .chain(extra.iter().map(|text| ("extra manifest", text.to_string())));
    let mut objects = Vec::new();
    for (name, text) in texts {
        let (parsed, problems) = parse_manifests(&text, &cfg);
        assert!(problems.is_empty(), "{name}: {problems:?}");
        objects.extend(parsed.expect("parsed"));
    }
    let index = Index::new();
    index.replace_all(objects);
    index
}

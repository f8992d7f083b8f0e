//! The shipped `.wasm` (profile `filter`): at most 600 KB, stripped of the `name` section,
//! free of the test-only crash trigger, and built without any signature-verification crate
//! (Envoy's jwt_authn verifies JWTs).

use opsgate_wasm_tests::require_plugin_wasm;

/// The custom sections of a wasm module, by name.
fn custom_sections(wasm: &[u8]) -> Vec<String> {
    fn leb(bytes: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let b = bytes[*at];
            *at += 1;
            value |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                return value;
            }
        }
    }
    let mut names = Vec::new();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb(wasm, &mut at);
        let end = at + size;
        if id == 0 {
            let mut p = at;
            let len = leb(wasm, &mut p);
            names.push(String::from_utf8_lossy(&wasm[p..p + len]).into_owned());
        }
        at = end;
    }
    names
}

#[test]
fn the_shipped_filter_is_small_and_stripped() {
    let path = require_plugin_wasm().unwrap();
    let wasm = std::fs::read(&path).unwrap();
    assert!(
        wasm.len() <= 600 * 1024,
        "{} is {} bytes; the budget is 600 KB",
        path.display(),
        wasm.len()
    );
    let sections = custom_sections(&wasm);
    assert!(!sections.iter().any(|s| s == "name"), "{sections:?}");
    let text = String::from_utf8_lossy(&wasm);
    assert!(
        !text.contains("x-opsgate-test-crash"),
        "the crash trigger shipped"
    );
}

/// The filter's dependencies, from the workspace's Cargo.lock: every package
/// `opsgate-plugin` pulls in, directly or not.
fn plugin_dependencies() -> Vec<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("Cargo.lock");
    // name -> the names it depends on (a dependency may read "name version").
    let mut deps = std::collections::BTreeMap::<String, Vec<String>>::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .expect("a package name");
        let list = block
            .split_once("dependencies = [")
            .map(|(_, rest)| rest.split(']').next().unwrap_or_default())
            .unwrap_or_default();
        let names = list
            .split(',')
            .map(|d| d.trim().trim_matches('"'))
            .filter(|d| !d.is_empty())
            .map(|d| d.split(' ').next().unwrap_or(d).to_string())
            .collect();
        deps.insert(name, names);
    }
    let mut seen = vec!["opsgate-plugin".to_string()];
    let mut at = 0;
    while at < seen.len() {
        for d in deps.get(&seen[at]).cloned().unwrap_or_default() {
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
        at += 1;
    }
    seen
}

#[test]
fn no_signature_verification_is_built_into_the_filter() {
    let deps = plugin_dependencies();
    assert!(
        deps.iter().any(|d| d == "serde_json") && deps.iter().any(|d| d == "opsgate-core"),
        "the walk found the filter's dependencies: {deps:?}"
    );
    for verifier in ["rsa", "p256", "ecdsa", "num-bigint-dig", "elliptic-curve"] {
        assert!(
            !deps.iter().any(|d| d == verifier),
            "{verifier} is built into the filter: {deps:?}"
        );
    }
}

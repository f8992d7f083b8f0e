//! The shipped `.wasm` (profile `filter`): at most 600 KB with RSA and P-256 verification in
//! it, stripped of the `name` section, and free of the test-only crash trigger.

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
    // No signature verification is compiled in: Envoy's jwt_authn verifies JWTs.
    let text = String::from_utf8_lossy(&wasm);
    for crate_name in ["rsa", "p256", "num-bigint", "elliptic-curve"] {
        assert!(
            !text.contains(&format!("/{crate_name}-")),
            "{crate_name} is compiled into the filter"
        );
    }
    assert!(
        !text.contains("x-opsgate-test-crash"),
        "the crash trigger shipped"
    );
}

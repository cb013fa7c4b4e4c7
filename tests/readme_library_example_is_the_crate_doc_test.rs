//! The README's "Bring your own pipeline" example is the crate-level doc
//! test, line for line, so the example users copy is one that compiles and
//! runs (`cargo test --doc`).

const README: &str = include_str!("../README.md");
const LIB: &str = include_str!("../src/lib.rs");

fn readme_example() -> Vec<&'static str> {
    let section = README
        .split("### Bring your own pipeline")
        .nth(1)
        .expect("README has a `Bring your own pipeline` section");
    let code = section
        .split("```rust\n")
        .nth(1)
        .and_then(|c| c.split("```").next())
        .expect("a rust code block in that section");
    code.lines().collect()
}

fn doc_test() -> Vec<&'static str> {
    LIB.lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.strip_prefix("//!").unwrap_or(l))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.starts_with("# "))
        .collect()
}

#[test]
fn the_readme_example_is_the_crate_doc_test() {
    let readme = readme_example();
    assert!(readme.len() > 20, "{readme:?}");
    assert_eq!(doc_test(), readme);
}

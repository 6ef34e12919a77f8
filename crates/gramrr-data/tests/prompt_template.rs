//! The GRAM-R² template must match method.md byte for byte: the released weights were trained
//! on exactly that text.

use std::path::PathBuf;

use gramrr_data::prompt::{JudgeTemplate, GRAM_RR_TEMPLATE};

/// The first fenced block of method.md, without the fences and without the newline that
/// ends its last line.
fn method_md_template() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/docs/method.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.split('\n');
    lines.by_ref().find(|l| *l == "```").expect("method.md has a fenced block");
    let block: Vec<&str> = lines.take_while(|l| *l != "```").collect();
    block.join("\n")
}

#[test]
fn gram_rr_template_is_byte_exact_with_method_md() {
    let expected = method_md_template();
    assert!(expected.contains("Comparision:"), "the misspelling is part of the trained format");
    assert_eq!(GRAM_RR_TEMPLATE, expected);
    assert_eq!(JudgeTemplate::gram_rr().template, expected);
}

#[test]
fn gram_rr_rendering_only_touches_placeholders() {
    let t = JudgeTemplate::gram_rr();
    let rendered = t.render("UQ", "R1", "R2");
    let expected = method_md_template()
        .replace("{user_input}", "UQ")
        .replace("{response_1}", "R1")
        .replace("{response_2}", "R2");
    assert_eq!(rendered, expected);
}

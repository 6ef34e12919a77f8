//! Chat records: the loss is on the final assistant message as the chat template renders it.

use std::path::Path;

use gramrr_model::tokenizer::TextTokenizer;
use gramrr_train::{load_sft_jsonl, Truncate};

#[test]
fn messages_put_the_loss_on_the_final_assistant_turn() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train-base");
    let tok = TextTokenizer::from_dir(&fx).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("chat.jsonl");
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": "Which is better, A or B?"}, {"role": "assistant", "content": "B is better."}]}
"#,
    )
    .unwrap();
    let (ex, stats) = load_sft_jsonl(&data, &tok, &[], 512, Truncate::Left).unwrap();
    assert_eq!(stats.kept, 1);
    let prompt = tok.decode(&ex[0].prompt_ids, false).unwrap();
    let completion = tok.decode(&ex[0].completion_ids, false).unwrap();
    assert!(prompt.starts_with("<|im_start|>user\nWhich is better, A or B?<|im_end|>\n"), "{prompt:?}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    // The template closes the turn itself; no second EOS is appended.
    assert!(completion.contains("B is better.") && completion.trim_end().ends_with("<|im_end|>"), "{completion:?}");
    assert_eq!(completion.matches("<|im_end|>").count(), 1);
    assert!(ex[0].completion_weights.iter().all(|&w| w == 1.0));
}

#[test]
fn long_records_are_truncated_or_skipped_and_counted() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tok = TextTokenizer::from_dir(&fx.join("train-base")).unwrap();
    let data = fx.join("sft.jsonl");
    let (all, _) = load_sft_jsonl(&data, &tok, &[], 4096, Truncate::Left).unwrap();
    let max_len = 20;
    let long = all.iter().filter(|e| e.len() > max_len).count();
    assert!(long > 0);
    let (kept, s) = load_sft_jsonl(&data, &tok, &[], max_len, Truncate::Left).unwrap();
    assert_eq!(s.truncated + s.skipped, long);
    assert!(kept.iter().all(|e| e.len() <= max_len));
    let (kept, s) = load_sft_jsonl(&data, &tok, &[], max_len, Truncate::Skip).unwrap();
    assert_eq!((s.skipped, s.truncated, kept.len()), (long, 0, all.len() - long));
}

//! The local engine and the remote backend against `gramrr serve` of the same model give the
//! same answers: greedy generations identical, log-probs and label probabilities within 1e-4,
//! the same judge verdicts.

mod common;

use std::sync::Arc;

use common::{engine, fixture, serve};
use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::{JudgeConfig, JudgeMode, PairInput, PairwiseJudge};
use gramrr_model::backend::{Backend, ChatMessage, GenerateRequest, LabelRequest, Prompt, SamplingParams, ScoreRequest};
use gramrr_remote::{RemoteBackend, RemoteConfig};

const MODEL: &str = "qwen3-qknorm";

fn connect(url: &str) -> RemoteBackend {
    RemoteBackend::connect(RemoteConfig::new(vec![url.to_string()], fixture(MODEL).to_string_lossy())).unwrap()
}

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Raw("The quick brown fox".into()),
        Prompt::Chat(vec![ChatMessage::user("What is two plus two?")]),
        Prompt::Raw("Once upon a time, in a land far away, there lived".into()),
        Prompt::Chat(vec![ChatMessage::user("Name a colour."), ChatMessage::assistant("Blue."), ChatMessage::user("Another?")]),
    ]
}

#[test]
fn greedy_generations_scores_and_label_probs_match_the_local_engine() {
    let local = engine(MODEL);
    let server = serve(local.clone(), "tiny", None);
    let remote = connect(&server.url);
    assert_eq!(remote.served_model(), "tiny");
    assert!(remote.capabilities.echo_logprobs && remote.capabilities.top_logprobs == 20 && remote.capabilities.ids_as_keys, "{:?}", remote.capabilities);

    // Generation: greedy, with and without a stop string, repeated prompts folded into one request.
    let reqs: Vec<GenerateRequest> =
        prompts().into_iter().chain(prompts()).enumerate().map(|(i, prompt)| GenerateRequest { prompt, seed_offset: i as u64 }).collect();
    for stop in [vec![], vec!["e".to_string()]] {
        let params = SamplingParams { max_new_tokens: 24, stop, ..SamplingParams::default() };
        let want = local.generate(&reqs, &params).unwrap();
        let got = remote.generate(&reqs, &params).unwrap();
        assert!(want.iter().filter(|w| !w.token_ids.is_empty()).count() >= 4, "the model generates something");
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.text, g.text, "item {i}");
            assert_eq!(w.token_ids, g.token_ids, "item {i}");
            assert_eq!(w.finish_reason, g.finish_reason, "item {i}");
            assert_eq!(w.prompt_tokens, g.prompt_tokens, "item {i}");
        }
    }

    // Teacher-forced scores, including an empty completion.
    let completions = ["jumps over the lazy dog", " Four.", "", " a dragon"];
    let sreqs: Vec<ScoreRequest> =
        prompts().into_iter().zip(completions).map(|(prompt, c)| ScoreRequest { prompt, completion: c.to_string() }).collect();
    let want = local.score(&sreqs).unwrap();
    let got = remote.score(&sreqs).unwrap();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!((w.prompt_tokens, w.completion_tokens), (g.prompt_tokens, g.completion_tokens), "item {i}");
        for (a, b) in w.token_logprobs.iter().zip(&g.token_logprobs) {
            assert!((a - b).abs() < 1e-4, "item {i}: {a} vs {b}");
        }
        assert!((w.logprob - g.logprob).abs() < 1e-4 * (1.0 + w.completion_tokens as f64), "item {i}");
    }

    // Label probabilities: from the top log-probs where the labels are among them, by scoring
    // where not, and (a second client that cannot see top log-probs) by scoring alone.
    let labels: Vec<String> = vec!["A".into(), "B".into(), "z".into()];
    let lreqs: Vec<LabelRequest> =
        prompts().into_iter().map(|prompt| LabelRequest { prompt, continuation: " <answer>".into() }).collect();
    let want = local.label_probs(&lreqs, &labels).unwrap();
    let mut scoring_only = connect(&server.url);
    scoring_only.capabilities.top_logprobs = 0;
    for client in [&remote, &scoring_only] {
        let got = client.label_probs(&lreqs, &labels).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            for j in 0..labels.len() {
                assert!((w.logprobs[j] - g.logprobs[j]).abs() < 1e-4, "item {i} label {j}: {} vs {}", w.logprobs[j], g.logprobs[j]);
                assert!((w.probs[j] - g.probs[j]).abs() < 1e-4, "item {i} label {j}");
            }
        }
    }
    assert!(remote.status_line().ends_with("replicas up 1/1") && remote.status_line().contains("req/s"), "{}", remote.status_line());
    let (requests, retries) = remote.counters();
    assert!(requests > 0 && retries == 0, "{requests} requests, {retries} retries");
}

#[test]
fn judge_verdicts_match_in_prob_and_reason_modes() {
    let local = engine(MODEL);
    let server = serve(local.clone(), "tiny", Some("sekret"));
    // The key is required: without it the probe is refused.
    let err = RemoteBackend::connect(RemoteConfig::new(vec![server.url.clone()], fixture(MODEL).to_string_lossy())).err().unwrap();
    assert!(err.to_string().contains("401"), "{err}");
    let mut cfg = RemoteConfig::new(vec![server.url.clone()], fixture(MODEL).to_string_lossy());
    cfg.pool.api_key = Some("sekret".into());
    let remote: Arc<dyn Backend> = Arc::new(RemoteBackend::connect(cfg).unwrap());
    let pairs: Vec<PairInput> = (0..6)
        .map(|i| PairInput::new(format!("q{i} what?"), format!("answer {} one", i * 3), format!("reply {} two", i + 7)))
        .collect();
    for mode in [JudgeMode::Prob, JudgeMode::Reason, JudgeMode::ProbAfterReason] {
        let config = JudgeConfig { mode, sampling: SamplingParams { max_new_tokens: 16, ..SamplingParams::default() }, ..JudgeConfig::default() };
        let want = PairwiseJudge::new(local.clone(), JudgeTemplate::compact(), config.clone()).judge_batch(&pairs).unwrap();
        let got = PairwiseJudge::new(remote.clone(), JudgeTemplate::compact(), config).judge_batch(&pairs).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.label, g.label, "{mode:?} pair {i}");
            assert!((w.p_a - g.p_a).abs() < 1e-4, "{mode:?} pair {i}: {} vs {}", w.p_a, g.p_a);
            assert_eq!(w.rationales(), g.rationales(), "{mode:?} pair {i}");
        }
    }
}

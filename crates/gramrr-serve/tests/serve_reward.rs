//! `/get_reward` as OpenRLHF calls it, and `/v1/rank`.

mod common;

use std::sync::Arc;

use common::post;
use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, JudgeMode, PairInput, PairwiseJudge};
use gramrr_serve::{start, ServeConfig};
use serde_json::json;

const PROMPT: &str = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a prime.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

fn judge(mode: JudgeMode) -> PairwiseJudge {
    PairwiseJudge::new(Arc::new(OracleBackend::default()), JudgeTemplate::gram_rr(), JudgeConfig { mode, ..JudgeConfig::default() })
}

#[tokio::test]
async fn get_reward_ranks_a_prompt_group_and_scores_against_labels() {
    let j = judge(JudgeMode::Prob);
    let handle = start(ServeConfig { port: 0, ..ServeConfig::default() }, j.clone()).await.unwrap();
    let addr = handle.addr();
    let responses = ["7 q=0.9", "9 q=0.1", "2 q=0.5", "1 q=0.3"];
    let queries: Vec<String> = responses.iter().map(|r| format!("{PROMPT}{r}<|eot_id|>")).collect();
    let prompts = vec![PROMPT; 4];
    let r = post(addr, "/get_reward", &json!({"query": queries, "prompts": prompts})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let rewards: Vec<f64> = v["rewards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(rewards.len(), 4);
    assert!(rewards[0] > rewards[2] && rewards[2] > rewards[3] && rewards[3] > rewards[1], "{rewards:?}");
    assert_eq!(v["scores"], v["rewards"]);
    assert_eq!(v["extra_logs"]["comparisons"], json!([3.0, 3.0, 3.0, 3.0]));

    // With labels as reference responses: P(response better than reference).
    let r = post(addr, "/get_reward", &json!({"query": [queries[0].clone(), queries[1].clone()], "prompts": [PROMPT, PROMPT], "labels": ["5 q=0.5", "5 q=0.5"]})).await;
    let v = r.json();
    let offline = j.judge_batch(&[PairInput::new("Name a prime.", "7 q=0.9", "5 q=0.5"), PairInput::new("Name a prime.", "9 q=0.1", "5 q=0.5")]).unwrap();
    assert_eq!(v["rewards"], json!([offline[0].p_a, offline[1].p_a]));
    assert_eq!(v["extra_logs"]["against_reference"], json!([1.0, 1.0]));

    // Without prompts the Llama 3 header splits the query; an empty list is valid.
    let r = post(addr, "/get_reward", &json!({"query": [queries[0].clone(), queries[1].clone()]})).await;
    let v = r.json();
    assert!(v["rewards"][0].as_f64().unwrap() > v["rewards"][1].as_f64().unwrap());
    let r = post(addr, "/get_reward", &json!({"query": []})).await;
    assert_eq!((r.status, r.json()), (200, json!({"rewards": [], "scores": [], "extra_logs": {"against_reference": [], "comparisons": [], "parse_failures": []}})));
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn rank_endpoint_finds_the_best_with_each_strategy() {
    let handle = start(ServeConfig { port: 0, ..ServeConfig::default() }, judge(JudgeMode::Reason)).await.unwrap();
    let addr = handle.addr();
    let responses = ["q=3", "q=9", "q=1", "q=5", "q=7"];
    for (strategy, comparisons) in [("linear", 4), ("knockout", 4), ("sort", 0), ("selection", 0), ("round-robin", 10)] {
        let r = post(addr, "/v1/rank", &json!({"prompt": [{"role": "user", "content": "best?"}], "responses": responses, "strategy": strategy})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["best"], 1, "{strategy}");
        if comparisons > 0 {
            assert_eq!(v["comparisons"], comparisons, "{strategy}");
        }
        if strategy != "linear" && strategy != "knockout" {
            assert_eq!(v["ranking"], json!([1, 4, 3, 0, 2]), "{strategy}");
        }
    }
    let r = post(addr, "/v1/judge", &json!({"prompt": "q", "response_a": "q=1", "response_b": "q=2", "both_orders": false, "mode": "prob"})).await;
    let v = r.json();
    assert_eq!(v["label"], "B");
    assert_eq!(v["consistent"], true);
    assert_eq!(v["rationales"], json!([]));
    handle.shutdown().await.unwrap();
}

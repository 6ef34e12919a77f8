//! GRPO on a tiny random policy in a tiny world: the reward is a rule (the share of `a`s in the
//! response), so whether the policy learns is unambiguous. Also: judge rewards through the
//! backend trait, and a run interrupted by a failing reward model resumes to bit-identical
//! weights.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::DType;
use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, JudgeMode, PairwiseJudge};
use gramrr_model::backend::{Prompt, SamplingParams};
use gramrr_model::init::{char_tokenizer, write_random_model, InitSpec};
use gramrr_model::{Architecture, Engine, LoadOptions};
use gramrr_rl::reward::RewardBatch;
use gramrr_rl::{
    train_grpo, FnReward, GrpoConfig, GrpoOutput, GroupScore, JudgeReward, PromptRecord, Quiet, RewardGroup, RewardModel, RlError,
};
use gramrr_train::{LoraConfig, LoraTarget, PolicyLossConfig, Scheduler};

fn tiny_policy(dir: &Path) -> Engine {
    let tok = char_tokenizer("abcdefgh q:").unwrap();
    let mut spec = InitSpec::tiny(Architecture::Qwen3);
    spec.hidden_size = 32;
    spec.intermediate_size = 64;
    spec.seed = 3;
    write_random_model(dir, &spec, &tok, DType::F32).unwrap();
    Engine::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn prompts() -> Vec<PromptRecord> {
    ["q:", "qq:", "q :", "q: b"]
        .iter()
        .enumerate()
        .map(|(i, p)| PromptRecord { id: i.to_string(), prompt: Prompt::Raw(p.to_string()), reference: None })
        .collect()
}

fn share_of_a(_: &str, r: &str, _: Option<&str>) -> f64 {
    if r.is_empty() {
        0.0
    } else {
        r.chars().filter(|&c| c == 'a').count() as f64 / r.chars().count() as f64
    }
}

fn config(steps: usize) -> GrpoConfig {
    GrpoConfig {
        steps,
        prompts_per_step: 2,
        group_size: 8,
        lr: 3e-3,
        scheduler: Scheduler::Constant,
        micro_batch: 8,
        sampling: SamplingParams { max_new_tokens: 6, temperature: 1.0, ..Default::default() },
        seed: 11,
        ..GrpoConfig::default()
    }
}

#[test]
fn mean_reward_rises_when_the_reward_is_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let policy = tiny_policy(dir.path());
    let reward = FnReward::new("share-of-a", share_of_a);
    let out = GrpoOutput { dir: dir.path().join("run"), base_model_dir: Some(dir.path().to_path_buf()), plot: true };
    let (_, report) = train_grpo(policy, &prompts(), &reward, &config(40), Some(&out), &mut Quiet).unwrap();
    let r: Vec<f64> = report.history.iter().map(|m| m.reward_mean).collect();
    let first = r[..8].iter().sum::<f64>() / 8.0;
    let last = r[r.len() - 8..].iter().sum::<f64>() / 8.0;
    eprintln!("mean reward: first 8 steps {first:.3}, last 8 steps {last:.3}");
    assert!(last > first + 0.15 && last > 2.0 * first, "the reward did not rise: first {first:.3}, last {last:.3}");
    // The KL to the starting policy grows from 0 as the policy moves.
    assert!(report.history[0].kl.abs() < 1e-5, "KL at step 1: {}", report.history[0].kl);
    assert!(report.history.last().unwrap().kl > 1e-3);
    for f in ["metrics.jsonl", "samples.jsonl", "summary.md", "curves.png", "model.safetensors", "config.json", "grpo_report.json"] {
        assert!(out.dir.join(f).exists(), "{f} missing");
    }
    let lines = std::fs::read_to_string(out.dir.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 40);
    let summary = std::fs::read_to_string(out.dir.join("summary.md")).unwrap();
    assert!(summary.contains("mean reward") && summary.contains("k3"), "{summary}");
}

/// Fails from its `fail_at`-th call on, like a reward server that went away.
struct Flaky {
    calls: AtomicUsize,
    fail_at: usize,
}

impl RewardModel for Flaky {
    fn name(&self) -> String {
        "share-of-a".into()
    }
    fn rewards(&self, groups: &[RewardGroup]) -> gramrr_rl::Result<RewardBatch> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_at {
            return Err(RlError::Reward { name: self.name(), message: "connection refused".into() });
        }
        FnReward::new("share-of-a", share_of_a).rewards(groups)
    }
}

#[test]
fn resume_after_interruption_gives_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(5);
    cfg.lora = Some(LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, targets: LoraTarget::ALL.to_vec() });
    cfg.num_iterations = 2; // the ratio differs from 1 on the second update: clipping is exercised
    cfg.loss = PolicyLossConfig { epsilon_low: 0.02, epsilon_high: 0.02, beta: 0.1 };
    cfg.lr = 2e-2;
    cfg.micro_batch = 5;
    cfg.save_every = 1;
    let run = |name: &str, reward: &dyn RewardModel, resume: bool| {
        let policy = tiny_policy(dir.path());
        let out = GrpoOutput { dir: dir.path().join(name), base_model_dir: Some(dir.path().to_path_buf()), plot: false };
        train_grpo(policy, &prompts(), reward, &GrpoConfig { resume, ..cfg.clone() }, Some(&out), &mut Quiet)
    };
    let good = FnReward::new("share-of-a", share_of_a);
    let (_, full) = run("whole", &good, false).unwrap();
    assert!(full.history.iter().any(|m| m.clip_fraction > 0.0), "no update was clipped");
    let err = run("broken", &Flaky { calls: AtomicUsize::new(0), fail_at: 4 }, false).err().expect("the flaky reward fails at step 4");
    assert!(err.to_string().contains("connection refused"), "{err}");
    let (_, resumed) = run("broken", &good, true).unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    let a = std::fs::read(dir.path().join("whole/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("broken/adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed adapter differs from the uninterrupted one");
    assert_eq!(
        full.history.iter().map(|m| m.reward_mean).collect::<Vec<_>>(),
        resumed.history.iter().map(|m| m.reward_mean).collect::<Vec<_>>()
    );
    let metrics = std::fs::read_to_string(dir.path().join("broken/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 5, "metrics.jsonl keeps one line per step after the resume");
    // Other settings refuse to resume this run.
    let policy = tiny_policy(dir.path());
    let out = GrpoOutput { dir: dir.path().join("broken"), base_model_dir: None, plot: false };
    let other = GrpoConfig { resume: true, group_size: 4, ..cfg.clone() };
    let e = train_grpo(policy, &prompts(), &good, &other, Some(&out), &mut Quiet).err().unwrap().to_string();
    assert!(e.contains("different settings"), "{e}");
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = FnReward::new("share-of-a", share_of_a);
    let cases: [(GrpoConfig, &str); 3] = [
        (GrpoConfig { group_size: 1, ..config(1) }, "group size must be at least 2"),
        (GrpoConfig { sampling: SamplingParams { temperature: 0.0, max_new_tokens: 4, ..Default::default() }, ..config(1) }, "temperature above 0"),
        (GrpoConfig { sampling: SamplingParams { temperature: 1.0, max_new_tokens: 5000, ..Default::default() }, ..config(1) }, "max_position_embeddings"),
    ];
    for (cfg, want) in cases {
        let e = train_grpo(tiny_policy(dir.path()), &prompts(), &good, &cfg, None, &mut Quiet).err().unwrap().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn judge_rewards_follow_the_judges_preferences_in_and_out_of_groups() {
    // The judge prefers responses with more `a`s (quality = their count).
    let backend = Arc::new(OracleBackend::new(|t: &str| t.chars().filter(|&c| c == 'a').count() as f64));
    let cfg = JudgeConfig { mode: JudgeMode::Prob, ..JudgeConfig::default() };
    let judge = PairwiseJudge::new(backend.clone(), JudgeTemplate::gram_rr(), cfg);
    let mut reward = JudgeReward::new(judge);
    let groups = vec![
        RewardGroup { prompt: "q".into(), reference: Some("aa".into()), responses: vec!["a".into(), "aaa".into(), "b".into()] },
        RewardGroup { prompt: "q".into(), reference: None, responses: vec!["ab".into(), "bbb".into(), "aaab".into(), "aab".into()] },
    ];
    let b = reward.rewards(&groups).unwrap();
    // Against the reference: P(better than "aa") rises with the count.
    let r0 = &b.rewards[0];
    assert!(r0[1] > 0.5 && r0[0] < 0.5 && r0[2] < r0[0], "{r0:?}");
    // Within the group: Bradley–Terry scores order the responses by quality.
    let r1 = &b.rewards[1];
    assert!(r1[2] > r1[3] && r1[3] > r1[0] && r1[0] > r1[1], "{r1:?}");
    // 3 reference comparisons + 6 round-robin pairs.
    assert_eq!(b.calls, 3 + 6);
    reward.score = GroupScore::WinRate;
    let w = reward.rewards(&groups).unwrap().rewards[1].clone();
    assert!(w.iter().all(|x| (0.0..=1.0).contains(x)) && w[2] > w[1], "{w:?}");

    // And as the reward of a short run: every step asks the judge for G(G-1)/2 pairs per prompt.
    let dir = tempfile::tempdir().unwrap();
    let policy = tiny_policy(dir.path());
    let reward = JudgeReward::new(PairwiseJudge::new(backend, JudgeTemplate::gram_rr(), JudgeConfig { mode: JudgeMode::Prob, ..JudgeConfig::default() }));
    let cfg = GrpoConfig { group_size: 4, ..config(2) };
    let (_, report) = train_grpo(policy, &prompts(), &reward, &cfg, None, &mut Quiet).unwrap();
    assert!(report.history.iter().all(|m| m.rm_calls == 2 * 6), "{:?}", report.history.iter().map(|m| m.rm_calls).collect::<Vec<_>>());
    assert!(report.reward.starts_with("judge("));
}

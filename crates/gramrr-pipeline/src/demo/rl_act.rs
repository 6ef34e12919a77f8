//! The demo's last act (opt-in: `gramrr demo --rl`): put the reward models to work on a policy.
//!
//! The policy is a weaker checkpoint (stage `policy`: the backbone fine-tuned on answers from
//! careless writers who mostly drop carries, so it has the skill and a habit that hides it), asked `Q: 63-15? ` as in its pretraining text; it
//! answers with its worked steps (`<think>36-51=84 so 48.</think>`), and the world's gold
//! verifier checks the stated computation ([`computation_correct`]). It is trained with GRPO
//! three times, on the same prompts and compute, rewarded by the final GRAM-R² model, by the
//! vanilla generative RM (both judging the answer a response states against the starting
//! policy's greedy answer, GRAM v1's reference: reward P(better)) and by the gold verifier
//! itself (the oracle). The
//! act reports gold accuracy before and after, gold accuracy against proxy reward over the
//! steps, and best-of-n accuracy (n = 1…16) of each selector on the starting policy's samples.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::{JudgeConfig, JudgeMode, ListRanker, PairwiseJudge, RankInput, StrategyKind};
use gramrr_model::backend::{Prompt, SamplingParams};
use gramrr_model::{Engine, LoadOptions};
use gramrr_rl::reward::{RewardBatch, RewardGroup, RewardModel};
use gramrr_rl::{FnReward, GrpoConfig, GrpoOutput, JudgeReward, PromptRecord, Quiet};
use serde::{Deserialize, Serialize};

use super::domain::{computation_correct, Domain};
use super::{DemoConfig, DemoSize};
use crate::error::{PipelineError, Result};
use crate::progress::note;

/// The settings of the act at each demo size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlActConfig {
    /// Fine-tuning steps that teach the starting policy its careless habit.
    pub policy_steps: usize,
    /// Share of the policy's fine-tuning answers with carries dropped.
    pub careless: f64,
    pub steps: usize,
    pub prompts_per_step: usize,
    pub group_size: usize,
    pub lr: f64,
    /// Sampling temperature of the policy's responses.
    pub temperature: f32,
    /// Weight of the KL penalty to the starting policy.
    pub beta: f64,
    pub max_new_tokens: usize,
    /// Held-out questions for gold accuracy (greedy) and for best-of-n.
    pub eval_questions: usize,
    pub best_of_n_questions: usize,
    /// Sampled rationales per comparison (the paper's voting@k): the reward is their mean
    /// preference, so one wrong computation of the judge's does not decide a question.
    #[serde(default = "one")]
    pub judge_votes: usize,
    /// Which rewards to train with, by slug (`gram-rr`, `vanilla`, `oracle`); the targets need
    /// the first two.
    #[serde(default = "all_rewards")]
    pub rewards: Vec<String>,
    /// Seed of GRPO's sampling and shuffling; unset, the demo's seed. Set it to see how much
    /// of a result is the run's luck rather than the reward (same policy, same RM).
    #[serde(default)]
    pub grpo_seed: Option<u64>,
}

fn one() -> usize {
    1
}

fn all_rewards() -> Vec<String> {
    ["gram-rr", "vanilla", "oracle"].map(String::from).to_vec()
}

impl RlActConfig {
    pub fn new(size: DemoSize) -> Self {
        match size {
            DemoSize::Full => RlActConfig { policy_steps: 100, careless: 0.7, steps: 60, prompts_per_step: 8, group_size: 8, lr: 1e-4, temperature: 1.0, beta: 0.04, max_new_tokens: 40, eval_questions: 300, best_of_n_questions: 100, judge_votes: 1, rewards: all_rewards(), grpo_seed: None },
            DemoSize::Quick => RlActConfig { policy_steps: 40, careless: 0.7, steps: 20, prompts_per_step: 8, group_size: 4, lr: 1e-4, temperature: 1.0, beta: 0.04, max_new_tokens: 40, eval_questions: 200, best_of_n_questions: 40, judge_votes: 1, rewards: all_rewards(), grpo_seed: None },
            DemoSize::Tiny => RlActConfig { policy_steps: 4, careless: 0.7, steps: 2, prompts_per_step: 2, group_size: 2, lr: 3e-4, temperature: 1.0, beta: 0.04, max_new_tokens: 8, eval_questions: 8, best_of_n_questions: 4, judge_votes: 1, rewards: all_rewards(), grpo_seed: None },
        }
    }

    /// The settings at `size`, with any fields of the JSON object in `GRAMRR_DEMO_RL` put over
    /// them (for experiments; the report records the settings it ran with).
    pub fn for_size(size: DemoSize) -> std::result::Result<Self, String> {
        let base = Self::new(size);
        match std::env::var("GRAMRR_DEMO_RL") {
            Ok(text) => base.with_overrides(&text),
            Err(_) => Ok(base),
        }
    }

    /// These settings with the fields of a JSON object put over them; unknown fields are refused.
    pub fn with_overrides(self, text: &str) -> std::result::Result<Self, String> {
        let mut v = serde_json::to_value(&self).expect("serializes");
        let over: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("GRAMRR_DEMO_RL is not a JSON object: {e}"))?;
        for (k, x) in over {
            if v.get(&k).is_none() {
                return Err(format!("GRAMRR_DEMO_RL: unknown setting {k:?}"));
            }
            v[k] = x;
        }
        serde_json::from_value(v).map_err(|e| format!("GRAMRR_DEMO_RL: {e}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardRun {
    pub reward: String,
    /// Greedy gold accuracy (%) on held-out questions.
    pub gold_before: f64,
    pub gold_after: f64,
    /// Per step: the proxy reward's mean and the gold accuracy (%) of the step's samples.
    pub proxy_reward: Vec<f64>,
    pub sample_gold: Vec<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestOfN {
    pub selector: String,
    /// (n, gold accuracy % of the selected response).
    pub accuracy: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlActReport {
    pub size: String,
    pub seed: u64,
    pub config: RlActConfig,
    pub runs: Vec<RewardRun>,
    pub best_of_n: Vec<BestOfN>,
    /// (target, met, measured).
    pub targets: Vec<(String, bool, String)>,
    pub seconds: f64,
}

fn err(out: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Config { path: out.to_path_buf(), message: format!("RL act: {e}") }
}

/// What a response states as its result (`so 48.`), as the answers the reward models were
/// trained to compare are written (`It is 48.`); the text itself when it states none.
pub fn stated_answer(text: &str) -> String {
    if let Some(i) = text.find(" so ") {
        let n: String = text[i + 4..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if !n.is_empty() {
            return format!("It is {n}.");
        }
    }
    text.chars().take(40).collect()
}

/// The question a policy prompt asks (`Q: 63-15? ` → `63-15?`), as the reward models and the
/// verifier know it: the RMs were trained on pairs whose prompt is the bare question.
pub fn question_of(prompt: &str) -> &str {
    prompt.trim().strip_prefix("Q:").unwrap_or(prompt).trim()
}

/// A judge of the stated answers to the bare question, within each group: the distinct
/// answers of a group meet in a round robin (Bradley–Terry scores) and each response gets its
/// answer's score. Identical answers are never put to the judge (a tie by definition), and a
/// group that states one answer has nothing to compare (all rewards 0, no gradient). Judging
/// against a reference answer does not work here: the starting policy's own answers are mostly
/// wrong, and two wrong or two identical answers give the judge nothing to tell apart.
struct AnswerJudge(JudgeReward, String);

impl RewardModel for AnswerJudge {
    fn name(&self) -> String {
        self.1.clone()
    }
    fn rewards(&self, groups: &[RewardGroup]) -> gramrr_rl::Result<RewardBatch> {
        let mut distinct: Vec<RewardGroup> = vec![];
        let mut slots: Vec<Option<(usize, Vec<usize>)>> = vec![];
        for g in groups {
            let answers: Vec<String> = g.responses.iter().map(|r| stated_answer(r)).collect();
            let mut unique: Vec<String> = vec![];
            let index: Vec<usize> = answers
                .iter()
                .map(|a| unique.iter().position(|u| u == a).unwrap_or_else(|| {
                    unique.push(a.clone());
                    unique.len() - 1
                }))
                .collect();
            if unique.len() < 2 {
                slots.push(None);
            } else {
                slots.push(Some((distinct.len(), index)));
                distinct.push(RewardGroup { prompt: question_of(&g.prompt).to_string(), reference: None, responses: unique });
            }
        }
        let judged = if distinct.is_empty() { RewardBatch { rewards: vec![], calls: 0, parts: vec![] } } else { self.0.rewards(&distinct)? };
        let rewards = groups
            .iter()
            .zip(&slots)
            .map(|(g, slot)| match slot {
                None => vec![0.0; g.responses.len()],
                Some((k, index)) => index.iter().map(|&u| judged.rewards[*k][u]).collect(),
            })
            .collect();
        Ok(RewardBatch { rewards, calls: judged.calls, parts: vec![] })
    }
}

fn judge(dir: &Path, opts: &LoadOptions, votes: usize) -> Result<PairwiseJudge> {
    let engine = Engine::load(&dir.display().to_string(), opts)?;
    let cfg = JudgeConfig {
        mode: JudgeMode::Reason,
        both_orders: false,
        votes,
        early_stop: false,
        sampling: SamplingParams { max_new_tokens: 72, ..SamplingParams::default() },
    };
    Ok(PairwiseJudge::new(Arc::new(engine), JudgeTemplate::compact(), cfg))
}

fn prompt(q: &str) -> Prompt {
    Prompt::Raw(format!("Q: {q} "))
}

/// Greedy gold accuracy (%) of `engine` on `questions`.
fn gold_accuracy(engine: &Engine, questions: &[String], max_new_tokens: usize) -> Result<f64> {
    let ids = questions.iter().map(|q| engine.encode_prompt(&prompt(q))).collect::<std::result::Result<Vec<_>, _>>()?;
    let offs: Vec<u64> = (0..ids.len() as u64).collect();
    let outs = engine.generate_ids(&ids, &offs, &SamplingParams { max_new_tokens, ..SamplingParams::default() })?;
    let right = questions.iter().zip(&outs).filter(|(q, o)| computation_correct(q, &o.text)).count();
    Ok(100.0 * right as f64 / questions.len().max(1) as f64)
}

/// The act's questions from the labeled and unlabeled sets (none from the test set): GRPO's
/// prompts (one pass, as many as the run asks for) and, disjoint from them, the rest for the
/// starting policy's fine-tuning, so that the policy has not memorised answers to the prompts
/// it is then trained on.
pub fn act_questions(domain: &Domain, act: &RlActConfig) -> (Vec<String>, Vec<String>) {
    let mut all = dedup_questions(domain.labeled.iter().chain(&domain.unlabeled));
    let rest = all.split_off((act.steps * act.prompts_per_step).min(all.len()));
    (all, rest)
}

fn dedup_questions<'a>(pairs: impl Iterator<Item = &'a gramrr_data::PreferencePair>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    pairs.map(|p| p.prompt.as_text()).filter(|q| seen.insert(q.clone())).collect()
}

/// Runs the act on a finished demo in `out`, starting from the policy checkpoint `policy`, and
/// writes `out/rl/report.md` and `report.json`.
pub fn run_rl_act(out: &Path, size: DemoSize, seed: u64, domain: &Domain, policy: &Path) -> Result<RlActReport> {
    let t0 = Instant::now();
    let cfg = DemoConfig::new(size);
    let act = RlActConfig::for_size(size).map_err(|e| err(out, e))?;
    let run = out.join("run");
    let stage = |s: &str| -> PathBuf { run.join(s).join("model") };
    for dir in [stage("baseline"), stage("final"), policy.to_path_buf()] {
        if !dir.join("config.json").exists() {
            return Err(err(out, format!("{} is missing: run the demo first (same --out, --seed and size)", dir.display())));
        }
    }
    let train_q = act_questions(domain, &act).0;
    let test_q: Vec<String> = dedup_questions(domain.test.iter()).into_iter().take(act.eval_questions).collect();
    let bon_q: Vec<String> = test_q.iter().take(act.best_of_n_questions).cloned().collect();
    let opts = LoadOptions {
        batch_size: cfg.engine.batch_size,
        max_batch_tokens: cfg.engine.max_batch_tokens,
        workers: cfg.engine.workers,
        ..LoadOptions::default()
    };
    let rl_dir = out.join("rl");
    std::fs::create_dir_all(&rl_dir).map_err(|e| PipelineError::io(&rl_dir, e))?;
    let start = Engine::load(&policy.display().to_string(), &opts)?;
    let gold_before = gold_accuracy(&start, &test_q, act.max_new_tokens)?;
    drop(start);
    let prompts: Vec<PromptRecord> = train_q.iter().map(|q| PromptRecord { id: q.clone(), prompt: prompt(q), reference: None }).collect();
    note(format!("RL act: the starting policy gets {gold_before:.1}% of {} held-out questions right", test_q.len()));

    let gram = || -> Result<Box<dyn RewardModel>> {
        let r = JudgeReward { use_reference: false, ..JudgeReward::new(judge(&stage("final"), &opts, act.judge_votes)?) };
        Ok(Box::new(AnswerJudge(r, "GRAM-R² final".into())))
    };
    let vanilla = || -> Result<Box<dyn RewardModel>> {
        let r = JudgeReward { use_reference: false, ..JudgeReward::new(judge(&stage("baseline"), &opts, act.judge_votes)?) };
        Ok(Box::new(AnswerJudge(r, "vanilla RM".into())))
    };
    let oracle = || -> Result<Box<dyn RewardModel>> {
        Ok(Box::new(FnReward::new("gold verifier (oracle)", |q: &str, r: &str, _: Option<&str>| computation_correct(question_of(q), r) as u8 as f64)))
    };
    let grpo = GrpoConfig {
        steps: act.steps,
        prompts_per_step: act.prompts_per_step,
        group_size: act.group_size,
        lr: act.lr,
        micro_batch: 64,
        sampling: SamplingParams { max_new_tokens: act.max_new_tokens, temperature: act.temperature, ..SamplingParams::default() },
        loss: gramrr_train::policy::PolicyLossConfig { beta: act.beta, ..Default::default() },
        seed: act.grpo_seed.unwrap_or(seed),
        ..GrpoConfig::default()
    };
    let mut runs = vec![];
    let builders: [(&str, &dyn Fn() -> Result<Box<dyn RewardModel>>); 3] = [("gram-rr", &gram), ("vanilla", &vanilla), ("oracle", &oracle)];
    for (slug, build) in builders {
        if !act.rewards.iter().any(|r| r == slug) {
            continue;
        }
        let t = Instant::now();
        let reward = build()?;
        let engine = Engine::load(&policy.display().to_string(), &opts)?;
        let o = GrpoOutput { dir: rl_dir.join(slug), base_model_dir: Some(policy.to_path_buf()), plot: true };
        note(format!("RL act: GRPO with {} ({} steps)", reward.name(), act.steps));
        let (trained, report) = gramrr_rl::train_grpo(engine, &prompts, reward.as_ref(), &grpo, Some(&o), &mut Quiet).map_err(|e| err(out, e))?;
        let gold_after = gold_accuracy(&trained, &test_q, act.max_new_tokens)?;
        // Gold accuracy of each step's samples, from samples.jsonl.
        let samples = std::fs::read_to_string(o.dir.join("samples.jsonl")).map_err(|e| PipelineError::io(o.dir.join("samples.jsonl"), e))?;
        let mut per_step = vec![(0usize, 0usize); act.steps];
        for l in samples.lines() {
            let s: gramrr_rl::grpo::Sample = serde_json::from_str(l).map_err(|e| err(out, e))?;
            let c = &mut per_step[s.step - 1];
            c.0 += computation_correct(&s.prompt_id, &s.response) as usize;
            c.1 += 1;
        }
        runs.push(RewardRun {
            reward: report.reward.clone(),
            gold_before,
            gold_after,
            proxy_reward: report.history.iter().map(|m| m.reward_mean).collect(),
            sample_gold: per_step.iter().map(|&(r, n)| 100.0 * r as f64 / n.max(1) as f64).collect(),
            seconds: t.elapsed().as_secs_f64(),
        });
        note(format!("RL act: {} → gold {gold_before:.1}% → {gold_after:.1}%", report.reward));
    }

    // Best-of-n on the starting policy's samples.
    let start = Engine::load(&policy.display().to_string(), &opts)?;
    let ids = bon_q.iter().map(|q| start.encode_prompt(&prompt(q))).collect::<std::result::Result<Vec<_>, _>>()?;
    let (reqs, offs): (Vec<Vec<u32>>, Vec<u64>) = ids.iter().enumerate().flat_map(|(i, p)| (0..16).map(move |k| (p.clone(), (i * 16 + k) as u64 + 1_000_000))).unzip();
    let samples = start.generate_ids(&reqs, &offs, &SamplingParams { max_new_tokens: act.max_new_tokens, temperature: act.temperature, seed, ..SamplingParams::default() })?;
    let texts: Vec<&str> = samples.iter().map(|o| o.text.as_str()).collect();
    let ns = [1usize, 2, 4, 8, 16];
    let mut best_of_n = vec![];
    for (name, dir) in [("GRAM-R² final", stage("final")), ("vanilla RM", stage("baseline"))] {
        let ranker = ListRanker::new(judge(&dir, &opts, 1)?, StrategyKind::Knockout);
        let mut acc = vec![];
        for &n in &ns {
            let lists: Vec<RankInput> = bon_q
                .iter()
                .enumerate()
                .map(|(i, q)| RankInput { id: q.clone(), user_input: q.clone(), responses: texts[i * 16..i * 16 + n].iter().map(|t| stated_answer(t)).collect() })
                .collect();
            let ranked = ranker.rank_batch(&lists).map_err(|e| err(out, e))?;
            let right = ranked.iter().enumerate().filter(|(i, r)| computation_correct(&bon_q[*i], texts[i * 16 + r.ranking.best])).count();
            acc.push((n, 100.0 * right as f64 / bon_q.len().max(1) as f64));
        }
        best_of_n.push(BestOfN { selector: name.into(), accuracy: acc });
    }
    let oracle_acc = ns
        .iter()
        .map(|&n| (n, 100.0 * (0..bon_q.len()).filter(|&i| texts[i * 16..i * 16 + n].iter().any(|t| computation_correct(&bon_q[i], t))).count() as f64 / bon_q.len().max(1) as f64))
        .collect();
    best_of_n.push(BestOfN { selector: "gold verifier (oracle)".into(), accuracy: oracle_acc });

    // A target whose runs were left out (GRAMRR_DEMO_RL's `rewards`) is reported as not met.
    let gain = |name: &str| runs.iter().find(|r| r.reward == name).map(|r| (r.gold_after - r.gold_before, r.gold_after));
    let bo16 = |k: usize| best_of_n[k].accuracy.last().map_or(f64::NAN, |x| x.1);
    let (g, v) = (gain("GRAM-R² final"), gain("vanilla RM"));
    let shown = |x: Option<f64>| x.map_or("not run".to_string(), |x| format!("{x:+.1}"));
    let targets = vec![
        ("policy trained on GRAM-R² gains ≥ 10 points of gold accuracy".to_string(), g.is_some_and(|g| g.0 >= 10.0), shown(g.map(|g| g.0))),
        (
            "it ends ≥ 5 points above the policy trained on the vanilla RM".to_string(),
            g.zip(v).is_some_and(|(g, v)| g.1 - v.1 >= 5.0),
            shown(g.zip(v).map(|(g, v)| g.1 - v.1)),
        ),
        ("GRAM-R²'s best-of-16 beats the vanilla RM's".to_string(), bo16(0) > bo16(1), format!("{:.1} vs {:.1}", bo16(0), bo16(1))),
    ];
    let report = RlActReport { size: size.as_str().into(), seed, config: act, runs, best_of_n, targets, seconds: t0.elapsed().as_secs_f64() };
    gramrr_model::fsutil::write_json_atomic(&rl_dir.join("report.json"), &serde_json::to_value(&report).expect("serializes"))?;
    gramrr_model::fsutil::write_atomic(&rl_dir.join("report.md"), report.to_markdown().as_bytes())?;
    if let Err(e) = plot_rl_act(&report, &rl_dir.join("rl.png")) {
        note(format!("RL act plot not drawn: {e}"));
    }
    Ok(report)
}

impl RlActReport {
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Demo, last act: GRPO with each reward ({} size, seed {})\n\nThe starting policy (the backbone fine-tuned {} steps on answers that drop carries {}% of the time) answers `Q: a±b? ` with its worked steps; the gold verifier checks them. GRPO: {} steps × {} prompts × {} samples, lr {}, temperature {}, β {}, full fine-tuning; each RM judges the distinct answers the group's responses state against each other in a round robin (Bradley–Terry scores; one order placed by content, reasoning mode).\n\n| reward | gold before | gold after | change | seconds |\n|---|---|---|---|---|\n",
            self.size, self.seed, self.config.policy_steps, 100.0 * self.config.careless, self.config.steps, self.config.prompts_per_step, self.config.group_size, self.config.lr, self.config.temperature, self.config.beta
        );
        for r in &self.runs {
            s.push_str(&format!("| {} | {:.1}% | {:.1}% | {:+.1} | {:.0} |\n", r.reward, r.gold_before, r.gold_after, r.gold_after - r.gold_before, r.seconds));
        }
        s.push_str("\nGold accuracy of the sampled responses against the proxy reward (mean over each quarter of the run):\n\n| reward | quarter | proxy reward | gold of samples |\n|---|---|---|---|\n");
        for r in &self.runs {
            let n = r.proxy_reward.len();
            let q = n.div_ceil(4).max(1);
            for (k, (p, g)) in r.proxy_reward.chunks(q).zip(r.sample_gold.chunks(q)).enumerate() {
                s.push_str(&format!("| {} | {} | {:.3} | {:.1}% |\n", r.reward, k + 1, p.iter().sum::<f64>() / p.len() as f64, g.iter().sum::<f64>() / g.len() as f64));
            }
        }
        s.push_str("\nBest-of-n on the starting policy's samples (gold accuracy of the selected response; the RMs pick by knockout):\n\n| selector |");
        for (n, _) in &self.best_of_n[0].accuracy {
            s.push_str(&format!(" n={n} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(self.best_of_n[0].accuracy.len()));
        s.push('\n');
        for b in &self.best_of_n {
            s.push_str(&format!("| {} |", b.selector));
            for (_, a) in &b.accuracy {
                s.push_str(&format!(" {a:.1}% |"));
            }
            s.push('\n');
        }
        s.push_str("\n## Targets\n\n");
        for (t, met, m) in &self.targets {
            s.push_str(&format!("- {} {t}: {m}\n", if *met { "met:" } else { "**not met**:" }));
        }
        s.push_str(&format!("\n![gold accuracy and proxy reward over the steps, best-of-n](rl.png)\n\nTime: {:.0} s.\n", self.seconds));
        s
    }
}

/// Three panels against the step (five-step means): the gold accuracy of each run's samples,
/// its proxy reward (over-optimisation shows as a proxy that rises while gold falls), and
/// best-of-n curves per selector.
pub fn plot_rl_act(report: &RlActReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let perr = |m: String| PipelineError::Plot { path: path.to_path_buf(), message: m };
    let text = gramrr_train::plot::ensure_font();
    let root = BitMapBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let panels = root.split_evenly((1, 3));
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
    let window = 5;
    let means = |v: &[f64]| -> Vec<(f64, f64)> {
        v.chunks(window).enumerate().map(|(k, c)| ((k * window) as f64 + (c.len() as f64 + 1.0) / 2.0, c.iter().sum::<f64>() / c.len() as f64)).collect()
    };
    // (title, y label, x label, curves per selector)
    type Curves = Vec<(String, Vec<(f64, f64)>)>;
    let gold: Curves = report.runs.iter().map(|r| (r.reward.clone(), means(&r.sample_gold))).collect();
    let proxy: Curves = report.runs.iter().map(|r| (r.reward.clone(), means(&r.proxy_reward))).collect();
    let bon: Curves = report.best_of_n.iter().map(|b| (b.selector.clone(), b.accuracy.iter().map(|&(n, a)| ((n as f64).log2(), a)).collect())).collect();
    let specs: [(&str, &str, &str, &Curves); 3] = [
        ("gold accuracy of the samples", "gold accuracy (%)", "GRPO step", &gold),
        ("proxy reward the run maximises", "mean reward", "GRPO step", &proxy),
        ("best-of-n on the starting policy's samples", "gold accuracy of the pick (%)", "log2 n", &bon),
    ];
    for (area, (title, ylab, xlab, curves)) in panels.iter().zip(specs) {
        let pts = curves.iter().flat_map(|c| c.1.iter().copied());
        let (x0, x1, y0, y1) = pts.fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(a, b, c, d), (x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)));
        if !x0.is_finite() {
            continue;
        }
        let (y0, y1) = if ylab.ends_with("(%)") { (0.0, 100.0) } else { (y0 - 0.05 * (y1 - y0).max(0.1), y1 + 0.05 * (y1 - y0).max(0.1)) };
        let mut b = ChartBuilder::on(area);
        b.margin(14);
        if text {
            b.caption(title, ("sans-serif", 17)).x_label_area_size(35).y_label_area_size(50);
        }
        let mut chart = b.build_cartesian_2d(x0..x1.max(x0 + 1.0), y0..y1).map_err(|e| perr(e.to_string()))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(xlab).y_desc(ylab).label_style(("sans-serif", 12));
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| perr(e.to_string()))?;
        for ((name, c), color) in curves.iter().zip(colors) {
            let s = chart.draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2))).map_err(|e| perr(e.to_string()))?;
            if text {
                s.label(name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart.draw_series(c.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| perr(e.to_string()))?;
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| perr(e.to_string()))?;
        }
    }
    root.present().map_err(|e| perr(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_see_the_bare_question_the_policy_was_asked() {
        // The policy's prompt is `Q: 63-15? `; the verifier and the RMs parse `63-15?`.
        let record = PromptRecord { id: "63-15?".into(), prompt: prompt("63-15?"), reference: None };
        let q = question_of(&record.judge_text()).to_string();
        let q = q.as_str();
        assert_eq!(q, "63-15?");
        assert!(computation_correct(q, "Sure. <think>36-51=84 so 48.</think>"));
        assert!(!computation_correct("Q: 63-15? ", "<think>36-51=84 so 48.</think>"), "the prompt as given does not parse");
        assert_eq!(stated_answer("<think>36-51=84 so 48.</think>"), "It is 48.");
    }

    #[test]
    fn overrides_set_known_fields_and_refuse_unknown_ones() {
        let base = RlActConfig::new(DemoSize::Tiny);
        assert_eq!(base.grpo_seed, None);
        let c = base.clone().with_overrides(r#"{"grpo_seed": 101, "rewards": ["gram-rr"]}"#).unwrap();
        assert_eq!((c.grpo_seed, c.rewards.as_slice(), c.steps), (Some(101), &["gram-rr".to_string()][..], base.steps));
        let e = base.clone().with_overrides(r#"{"grpo_sed": 101}"#).unwrap_err();
        assert!(e.contains("grpo_sed"), "{e}");
        assert!(base.with_overrides("[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn the_plot_draws_every_run_and_selector() {
        let run = |name: &str, slope: f64| RewardRun {
            reward: name.into(),
            gold_before: 35.0,
            gold_after: 35.0 + slope * 10.0,
            proxy_reward: (0..20).map(|i| 0.02 * i as f64).collect(),
            sample_gold: (0..20).map(|i| 40.0 + slope * i as f64).collect(),
            seconds: 1.0,
        };
        let bon = |name: &str, top: f64| BestOfN { selector: name.into(), accuracy: [1, 2, 4, 8, 16].iter().map(|&n| (n, 34.0 + top * (n as f64).log2())).collect() };
        let report = RlActReport {
            size: "full".into(),
            seed: 0,
            config: RlActConfig::new(DemoSize::Full),
            runs: vec![run("GRAM-R² final", -0.5), run("vanilla RM", -1.0), run("gold verifier (oracle)", 1.0)],
            best_of_n: vec![bon("GRAM-R² final", 4.0), bon("vanilla RM", 1.0), bon("gold verifier (oracle)", 10.0)],
            targets: vec![],
            seconds: 1.0,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var("GRAMRR_KEEP_PLOT").map(PathBuf::from).unwrap_or_else(|_| dir.path().join("rl.png"));
        plot_rl_act(&report, &path).unwrap();
        let (w, h) = image_size(&path);
        assert_eq!((w, h), (1500, 480));
        assert!(report.to_markdown().contains("| GRAM-R² final | 35.0% | 30.0% | -5.0 |"), "{}", report.to_markdown());
    }

    /// Width and height from a PNG's IHDR chunk.
    fn image_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[1..4], b"PNG");
        (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
    }
}

//! Pairwise verdicts.
//!
//! A verdict on a pair `(x, y_a, y_b)` is made of judgments: one per presentation order and
//! per vote. Each judgment is one backend request; all the judgments that can run together,
//! across every pair of the batch, go to the backend as one call.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::verdict::ParseFailure;
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::{Backend, FinishReason, GenerateOutput, GenerateRequest, LabelOutput, LabelRequest, Prompt, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::error::{JudgeError, Result};
use crate::seed::{fnv1a, mix};

/// How a judgment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeMode {
    /// Generate a rationale, then parse the label from it (GRAM-R²).
    #[default]
    Reason,
    /// No generation: the softmax over the two label tokens right after the prompt and the
    /// template's direct prefix (GRAM v1's scalar).
    Prob,
    /// Generate a rationale, then read the label-token softmax at its answer position. The
    /// verdict keeps both the parsed label and the probability.
    ProbAfterReason,
}

impl JudgeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeMode::Reason => "reason",
            JudgeMode::Prob => "prob",
            JudgeMode::ProbAfterReason => "prob-after-reason",
        }
    }
    fn generates(self) -> bool {
        self != JudgeMode::Prob
    }
}

impl FromStr for JudgeMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reason" => Ok(JudgeMode::Reason),
            "prob" => Ok(JudgeMode::Prob),
            "prob-after-reason" => Ok(JudgeMode::ProbAfterReason),
            _ => Err(format!("unknown judge mode {s:?}: expected reason, prob or prob-after-reason")),
        }
    }
}

impl std::fmt::Display for JudgeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verdict is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeConfig {
    pub mode: JudgeMode,
    /// Judge (A, B) and (B, A). Off: one order per pair, placed at random from a seed.
    pub both_orders: bool,
    /// Samples per order (voting@k). Ignored in `prob` mode, which is deterministic. Votes
    /// only differ when `sampling.temperature > 0`.
    pub votes: usize,
    /// Stop sampling votes for a pair once the remaining ones cannot change its majority
    /// (`reason` mode).
    pub early_stop: bool,
    /// Generation settings; `sampling.seed` also seeds the one-order placement.
    pub sampling: SamplingParams,
}

/// The temperature of votes when more than one is asked for and `sampling.temperature` is 0:
/// greedy votes would be identical copies (and early stopping would end them after a majority of
/// copies), so voting@k always samples.
pub const DEFAULT_VOTE_TEMPERATURE: f32 = 0.7;

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            mode: JudgeMode::Reason,
            both_orders: true,
            votes: 1,
            early_stop: true,
            sampling: SamplingParams { max_new_tokens: 1024, ..SamplingParams::default() },
        }
    }
}

impl JudgeConfig {
    /// The generation settings the judge uses. The one place for the rule "several votes sample":
    /// with `votes > 1` and a greedy `sampling.temperature` (0), votes sample at
    /// [`DEFAULT_VOTE_TEMPERATURE`]. The CLI, the server and the pipeline all go through here.
    pub fn effective_sampling(&self) -> SamplingParams {
        let mut s = self.sampling.clone();
        if self.votes > 1 && s.temperature == 0.0 && self.mode.generates() {
            s.temperature = DEFAULT_VOTE_TEMPERATURE;
        }
        s
    }

    pub fn validate(&self) -> Result<()> {
        if self.votes == 0 {
            return Err(JudgeError::Config { field: "votes", message: "must be at least 1".into() });
        }
        if self.mode.generates() && self.sampling.max_new_tokens == 0 {
            return Err(JudgeError::Config {
                field: "sampling.max_new_tokens",
                message: format!("must be at least 1 in {} mode", self.mode),
            });
        }
        Ok(())
    }
    fn orders(&self) -> usize {
        if self.both_orders { 2 } else { 1 }
    }
    /// Judgments a pair needs when none stops early.
    pub fn judgments_per_pair(&self) -> usize {
        match self.mode {
            JudgeMode::Prob => self.orders(),
            _ => self.orders() * self.votes,
        }
    }
}

/// One comparison to judge: the user side as template text and the two responses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PairInput {
    pub user_input: String,
    pub response_a: String,
    pub response_b: String,
}

impl PairInput {
    pub fn new(user_input: impl Into<String>, response_a: impl Into<String>, response_b: impl Into<String>) -> Self {
        PairInput { user_input: user_input.into(), response_a: response_a.into(), response_b: response_b.into() }
    }
    pub fn from_pair(pair: &PreferencePair) -> Self {
        PairInput::new(pair.prompt.as_text(), pair.response_a.clone(), pair.response_b.clone())
    }
    /// The content hash every seed of this pair derives from.
    pub fn key(&self) -> u64 {
        fnv1a(&[&self.user_input, &self.response_a, &self.response_b])
    }
}

/// Tokens and time spent. A batched call's time is shared evenly by its requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub requests: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub seconds: f64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.seconds += o.seconds;
    }
}

/// One judgment: one order, one vote. Labels and probabilities are in the pair's own
/// orientation (A is `response_a`) whatever the order it was shown in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    /// Shown as (B, A).
    pub swapped: bool,
    pub vote: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// The parsed label (`reason`, `prob-after-reason`) or the likelier label (`prob`).
    pub label: Option<Label>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<ParseFailure>,
    /// P(A better) from the label-token softmax, in the probability modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_a: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    pub usage: Usage,
}

impl Judgment {
    /// Did this judgment pick the response shown first? `None` when it picked nothing.
    pub fn chose_first(&self) -> Option<bool> {
        self.label.map(|l| (l == Label::A) != self.swapped)
    }
    /// P(the response shown first is better), in the probability modes.
    pub fn p_first(&self) -> Option<f64> {
        self.p_a.map(|p| if self.swapped { 1.0 - p } else { p })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteCount {
    pub a: usize,
    pub b: usize,
    pub failed: usize,
}

/// The verdict on one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairVerdict {
    /// The majority label (`reason`) or the side of 0.5 `p_a` falls on (probability modes);
    /// `None` for a tie or when every judgment failed.
    pub label: Option<Label>,
    /// P(A better): the share of A votes among valid votes (`reason`, 0.5 with none), or the
    /// label-token probability averaged over orders and votes (probability modes).
    pub p_a: f64,
    /// Both orders reached the same label; `None` when only one order ran.
    pub consistent: Option<bool>,
    pub votes: VoteCount,
    pub judgments: Vec<Judgment>,
    pub usage: Usage,
}

impl PairVerdict {
    /// Why there is no label, for reports and the server's `failure` field.
    pub fn failure(&self) -> Option<String> {
        if self.label.is_some() {
            return None;
        }
        if self.votes.a + self.votes.b == 0 && self.votes.failed > 0 {
            let mut kinds: Vec<&str> = self.judgments.iter().filter_map(|j| j.failure.as_ref().map(ParseFailure::kind)).collect();
            kinds.dedup();
            return Some(format!("all {} judgments failed to parse ({})", self.votes.failed, kinds.join(", ")));
        }
        if self.judgments.iter().any(|j| j.p_a.is_some()) {
            return Some(format!("tie: p_a = {}", self.p_a));
        }
        Some(format!("tie: {} votes for A, {} for B", self.votes.a, self.votes.b))
    }
    pub fn rationales(&self) -> Vec<String> {
        self.judgments.iter().filter_map(|j| j.rationale.clone()).collect()
    }
}

/// A generative reward model as a pairwise judge.
#[derive(Clone)]
pub struct PairwiseJudge {
    backend: Arc<dyn Backend>,
    pub template: JudgeTemplate,
    pub config: JudgeConfig,
}

/// One judgment to run: which pair, which slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    item: usize,
    swapped: bool,
    vote: usize,
}

const PLACEMENT: u64 = 0x706c_6163_656d_656e; // "placemen"

impl PairwiseJudge {
    pub fn new(backend: Arc<dyn Backend>, template: JudgeTemplate, config: JudgeConfig) -> Self {
        PairwiseJudge { backend, template, config }
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    /// The same judge with other settings (the server's per-request options).
    pub fn with_config(&self, config: JudgeConfig) -> Self {
        PairwiseJudge { backend: self.backend.clone(), template: self.template.clone(), config }
    }

    fn judging(&self) -> Judging<'_> {
        Judging { backend: &*self.backend, template: &self.template, config: &self.config }
    }

    /// With one order, whether this pair is shown as (B, A): a coin flip seeded by the pair's
    /// content and `sampling.seed`, so it is the same in every batch.
    pub fn placement_swapped(&self, key: u64) -> bool {
        self.judging().placement_swapped(key)
    }

    /// The model input for a pair in one order.
    pub fn prompt(&self, pair: &PairInput, swapped: bool) -> Prompt {
        self.judging().prompt(pair, swapped)
    }

    /// Verdicts for every pair, batched.
    pub fn judge_batch(&self, items: &[PairInput]) -> Result<Vec<PairVerdict>> {
        self.judging().judge_batch(items)
    }

    /// One verdict (a batch of one).
    pub fn judge(&self, item: &PairInput) -> Result<PairVerdict> {
        Ok(self.judge_batch(std::slice::from_ref(item))?.pop().expect("one verdict per item"))
    }
}

/// Verdicts for every pair from a borrowed backend: what [`PairwiseJudge::judge_batch`] does, for
/// callers that hold their engine themselves (the pipeline's stages load one per stage). The one
/// place where a pair is judged: same prompts, same content-derived seeds, same aggregation.
pub fn judge_pairs(backend: &dyn Backend, template: &JudgeTemplate, config: &JudgeConfig, items: &[PairInput]) -> Result<Vec<PairVerdict>> {
    Judging { backend, template, config }.judge_batch(items)
}

/// A judge's settings with the backend it runs on, borrowed for one batch.
struct Judging<'a> {
    backend: &'a dyn Backend,
    template: &'a JudgeTemplate,
    config: &'a JudgeConfig,
}

impl Judging<'_> {
    /// With one order, whether this pair is shown as (B, A): a coin flip seeded by the pair's
    /// content and `sampling.seed`, so it is the same in every batch.
    pub fn placement_swapped(&self, key: u64) -> bool {
        mix(&[key, self.config.sampling.seed, PLACEMENT]) & 1 == 1
    }

    fn slot(&self, item: usize, key: u64, j: usize) -> Slot {
        if self.config.both_orders {
            // Alternating orders keeps an early-stopped vote balanced between them.
            Slot { item, swapped: j % 2 == 1, vote: j / 2 }
        } else {
            Slot { item, swapped: self.placement_swapped(key), vote: j }
        }
    }

    /// The model input for a pair in one order.
    pub fn prompt(&self, pair: &PairInput, swapped: bool) -> Prompt {
        let (first, second) = if swapped { (&pair.response_b, &pair.response_a) } else { (&pair.response_a, &pair.response_b) };
        self.template.to_prompt(&pair.user_input, first, second)
    }

    /// Verdicts for every pair, batched.
    pub fn judge_batch(&self, items: &[PairInput]) -> Result<Vec<PairVerdict>> {
        self.config.validate()?;
        let keys: Vec<u64> = items.iter().map(PairInput::key).collect();
        let mut judgments: Vec<Vec<Judgment>> = vec![Vec::new(); items.len()];
        let per_pair = self.config.judgments_per_pair();
        match self.config.mode {
            JudgeMode::Prob => {
                let slots: Vec<Slot> =
                    (0..items.len()).flat_map(|i| (0..per_pair).map(move |j| (i, j))).map(|(i, j)| self.slot(i, keys[i], j)).collect();
                let conts = vec![self.template.direct_prefix.clone(); slots.len()];
                let (outs, share) = self.label_call(items, &slots, &conts)?;
                for (slot, out) in slots.iter().zip(outs) {
                    let usage = Usage { requests: 1, seconds: share, ..Usage::default() };
                    judgments[slot.item].push(prob_judgment(slot, &out, None, None, None, usage));
                }
            }
            JudgeMode::ProbAfterReason => {
                let slots: Vec<Slot> =
                    (0..items.len()).flat_map(|i| (0..per_pair).map(move |j| (i, j))).map(|(i, j)| self.slot(i, keys[i], j)).collect();
                let (gens, gen_share) = self.generate_call(items, &keys, &slots)?;
                let conts: Vec<String> = gens.iter().map(|g| self.template.answer_continuation(&g.text)).collect();
                let (outs, label_share) = self.label_call(items, &slots, &conts)?;
                for ((slot, gen), out) in slots.iter().zip(gens).zip(outs) {
                    let usage = Usage {
                        requests: 2,
                        prompt_tokens: gen.prompt_tokens,
                        completion_tokens: gen.token_ids.len(),
                        seconds: gen_share + label_share,
                    };
                    let parsed = self.template.parser.parse(&gen.text).map(|l| orient(l, slot.swapped));
                    let failure = parsed.clone().err();
                    let mut j = prob_judgment(slot, &out, Some(gen.text), failure, Some(gen.finish_reason), usage);
                    // The verdict keeps what the rationale said; the probability is beside it.
                    j.label = parsed.ok();
                    judgments[slot.item].push(j);
                }
            }
            JudgeMode::Reason => {
                let total = per_pair;
                let first = if self.config.early_stop { (total / 2 + 1).min(total) } else { total };
                let mut next = vec![0usize; items.len()];
                let mut want = vec![first; items.len()];
                loop {
                    let mut slots = Vec::new();
                    for i in 0..items.len() {
                        for j in next[i]..next[i] + want[i] {
                            slots.push(self.slot(i, keys[i], j));
                        }
                        next[i] += want[i];
                    }
                    if slots.is_empty() {
                        break;
                    }
                    let (gens, share) = self.generate_call(items, &keys, &slots)?;
                    for (slot, gen) in slots.iter().zip(gens) {
                        judgments[slot.item].push(self.reason_judgment(slot, gen, share));
                    }
                    for i in 0..items.len() {
                        let remaining = total - next[i];
                        let (a, b) = count(&judgments[i]);
                        let lead = a.abs_diff(b);
                        want[i] = if remaining == 0 || (self.config.early_stop && lead > remaining) {
                            0
                        } else if self.config.early_stop {
                            // The fewest further votes that could settle it, were they all for
                            // the leader: lead + m > remaining - m.
                            ((remaining - lead) / 2 + 1).min(remaining)
                        } else {
                            remaining
                        };
                    }
                }
            }
        }
        Ok(judgments.into_iter().map(|j| self.aggregate(j)).collect())
    }

    fn reason_judgment(&self, slot: &Slot, gen: GenerateOutput, share: f64) -> Judgment {
        let parsed = self.template.parser.parse(&gen.text).map(|l| orient(l, slot.swapped));
        Judgment {
            swapped: slot.swapped,
            vote: slot.vote,
            label: parsed.as_ref().ok().copied(),
            failure: parsed.err(),
            p_a: None,
            finish_reason: Some(gen.finish_reason),
            usage: Usage { requests: 1, prompt_tokens: gen.prompt_tokens, completion_tokens: gen.token_ids.len(), seconds: share },
            rationale: Some(gen.text),
        }
    }

    fn generate_call(&self, items: &[PairInput], keys: &[u64], slots: &[Slot]) -> Result<(Vec<GenerateOutput>, f64)> {
        let requests: Vec<GenerateRequest> = slots
            .iter()
            .map(|s| GenerateRequest {
                prompt: self.prompt(&items[s.item], s.swapped),
                seed_offset: mix(&[keys[s.item], s.swapped as u64, s.vote as u64]),
            })
            .collect();
        let t = Instant::now();
        let outs = self
            .backend
            .generate(&requests, &self.config.effective_sampling())
            .map_err(|source| JudgeError::Backend { call: "generate", requests: requests.len(), source })?;
        let secs = t.elapsed().as_secs_f64();
        if outs.len() != requests.len() {
            return Err(JudgeError::OutputCount { call: "generate", expected: requests.len(), got: outs.len() });
        }
        Ok((outs, secs / requests.len().max(1) as f64))
    }

    fn label_call(&self, items: &[PairInput], slots: &[Slot], continuations: &[String]) -> Result<(Vec<LabelOutput>, f64)> {
        let requests: Vec<LabelRequest> = slots
            .iter()
            .zip(continuations)
            .map(|(s, c)| LabelRequest { prompt: self.prompt(&items[s.item], s.swapped), continuation: c.clone() })
            .collect();
        let labels = self.template.label_candidates();
        let t = Instant::now();
        let outs = self
            .backend
            .label_probs(&requests, &labels)
            .map_err(|source| JudgeError::Backend { call: "label_probs", requests: requests.len(), source })?;
        let secs = t.elapsed().as_secs_f64();
        if outs.len() != requests.len() {
            return Err(JudgeError::OutputCount { call: "label_probs", expected: requests.len(), got: outs.len() });
        }
        if let Some((index, o)) = outs.iter().enumerate().find(|(_, o)| o.probs.len() != 2) {
            return Err(JudgeError::LabelCount { index, got: o.probs.len() });
        }
        Ok((outs, secs / requests.len().max(1) as f64))
    }

    fn aggregate(&self, judgments: Vec<Judgment>) -> PairVerdict {
        let (a, b) = count(&judgments);
        let failed = judgments.len() - a - b;
        let mut usage = Usage::default();
        for j in &judgments {
            usage += j.usage;
        }
        let probs: Vec<f64> = judgments.iter().filter_map(|j| j.p_a).collect();
        let by_prob = self.config.mode != JudgeMode::Reason && !probs.is_empty();
        let p_a = if by_prob {
            probs.iter().sum::<f64>() / probs.len() as f64
        } else if a + b > 0 {
            a as f64 / (a + b) as f64
        } else {
            0.5
        };
        let side = |p: f64| {
            if p > 0.5 {
                Some(Label::A)
            } else if p < 0.5 {
                Some(Label::B)
            } else {
                None
            }
        };
        let majority = |a: usize, b: usize| match a.cmp(&b) {
            std::cmp::Ordering::Greater => Some(Label::A),
            std::cmp::Ordering::Less => Some(Label::B),
            std::cmp::Ordering::Equal => None,
        };
        let label = if by_prob { side(p_a) } else { majority(a, b) };
        let consistent = self.config.both_orders.then(|| {
            let order_label = |swapped: bool| {
                let js: Vec<&Judgment> = judgments.iter().filter(|j| j.swapped == swapped).collect();
                if by_prob {
                    let ps: Vec<f64> = js.iter().filter_map(|j| j.p_a).collect();
                    if ps.is_empty() { None } else { side(ps.iter().sum::<f64>() / ps.len() as f64) }
                } else {
                    let a = js.iter().filter(|j| j.label == Some(Label::A)).count();
                    let b = js.iter().filter(|j| j.label == Some(Label::B)).count();
                    majority(a, b)
                }
            };
            let (first, second) = (order_label(false), order_label(true));
            first.is_some() && first == second
        });
        PairVerdict { label, p_a, consistent, votes: VoteCount { a, b, failed }, judgments, usage }
    }
}

fn count(judgments: &[Judgment]) -> (usize, usize) {
    let a = judgments.iter().filter(|j| j.label == Some(Label::A)).count();
    let b = judgments.iter().filter(|j| j.label == Some(Label::B)).count();
    (a, b)
}

/// A label read from a prompt shown in `swapped` order, in the pair's own orientation.
fn orient(shown: Label, swapped: bool) -> Label {
    if swapped { shown.flipped() } else { shown }
}

fn prob_judgment(
    slot: &Slot,
    out: &LabelOutput,
    rationale: Option<String>,
    failure: Option<ParseFailure>,
    finish_reason: Option<FinishReason>,
    usage: Usage,
) -> Judgment {
    let (pa, pb) = (out.probs[0] as f64, out.probs[1] as f64);
    // The backend's softmax is over the candidates already; renormalising guards against an
    // implementation that returns full-vocabulary probabilities instead.
    let p_first = if pa + pb > 0.0 { pa / (pa + pb) } else { 0.5 };
    let p_a = if slot.swapped { 1.0 - p_first } else { p_first };
    let label = if p_a > 0.5 {
        Some(Label::A)
    } else if p_a < 0.5 {
        Some(Label::B)
    } else {
        None
    };
    Judgment { swapped: slot.swapped, vote: slot.vote, rationale, label, failure, p_a: Some(p_a), finish_reason, usage }
}

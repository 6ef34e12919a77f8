//! The demo's synthetic preference domain: 2-digit addition and subtraction, where explicit
//! reasoning helps and every answer can be checked.
//!
//! A pair holds one right and one wrong answer to a question, each written in one of five
//! styles (concise, sentence, markdown, verbose, markdown-verbose) drawn independently of
//! correctness, so style carries no signal (as in RM-Bench). Wrong answers are the mistakes
//! people make: a dropped carry, off by one or by ten, swapped digits. The generator is a pure
//! function of its seed.
//!
//! Worked steps are written in reversed digits (`63-15` is worked as `36-51=84`, read back as
//! 48): the model then produces the least significant digit first, when the carry is known
//! (demo-notes #3/#4).

use std::collections::HashSet;

use gramrr_data::{CandidateList, Conversation, Label, PreferencePair};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::format::compact::{claim_line, ANSWER, ANSWER_END, THINK, THINK_END};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
}

/// `a op b` with two-digit operands (and `a > b` for subtraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
    pub op: Op,
}

pub fn reversed(n: u32) -> String {
    n.to_string().chars().rev().collect()
}

impl Problem {
    pub fn answer(&self) -> u32 {
        match self.op {
            Op::Add => self.a + self.b,
            Op::Sub => self.a - self.b,
        }
    }
    fn sym(&self) -> char {
        match self.op {
            Op::Add => '+',
            Op::Sub => '-',
        }
    }
    /// `63-15?`
    pub fn question(&self) -> String {
        format!("{}{}{}?", self.a, self.sym(), self.b)
    }
    /// `36-51=84`: the computation in reversed digits.
    pub fn work(&self) -> String {
        format!("{}{}{}={}", reversed(self.a), self.sym(), reversed(self.b), reversed(self.answer()))
    }
    /// Parses `63-15?` back.
    pub fn parse(q: &str) -> Option<Problem> {
        let q = q.strip_suffix('?')?;
        let (i, op) = q.char_indices().skip(1).find_map(|(i, c)| match c {
            '+' => Some((i, Op::Add)),
            '-' => Some((i, Op::Sub)),
            _ => None,
        })?;
        Some(Problem { a: q[..i].parse().ok()?, b: q[i + 1..].parse().ok()?, op })
    }

    /// The result with carries and borrows dropped: each column on its own (sums mod 10,
    /// differences as |x - y|), the commonest slip in written arithmetic.
    pub fn no_carry(&self) -> u32 {
        let (a, b) = (self.a as i64, self.b as i64);
        (match self.op {
            Op::Add => ((a / 10 + b / 10) % 10) * 10 + (a % 10 + b % 10) % 10,
            Op::Sub => ((a / 10 - b / 10).abs()) * 10 + (a % 10 - b % 10).abs(),
        }) as u32
    }

    /// The worked steps of a careless writer who drops carries (`36-51=…` with each column on
    /// its own): the work and the result agree with each other, and both are wrong wherever a
    /// carry or borrow was needed.
    pub fn careless_work(&self) -> String {
        format!("{}{}{}={}", reversed(self.a), self.sym(), reversed(self.b), reversed(self.no_carry()))
    }

    /// Plausible wrong answers: a dropped carry or borrow, off by one or ten, swapped digits.
    pub fn wrong_answers(&self) -> Vec<u32> {
        let c = self.answer() as i64;
        let no_carry = self.no_carry() as i64;
        let swapped: i64 = reversed(c as u32).parse().unwrap_or(c);
        let mut out: Vec<u32> = [no_carry, c + 1, c - 1, c + 10, c - 10, swapped]
            .into_iter()
            .filter(|&w| w >= 0 && w != c)
            .map(|w| w as u32)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The five answer styles.
pub const STYLES: [&str; 5] = ["concise", "sentence", "markdown", "verbose", "markdown-verbose"];

pub fn styled(v: u32, style: usize) -> String {
    match style {
        0 => format!("{v}"),
        1 => format!("It is {v}."),
        2 => format!("**{v}**"),
        3 => format!("The answer is {v}."),
        _ => format!("Answer: **{v}**"),
    }
}

/// The canonical rationale for a pair: the work, the result, each response judged.
pub fn rationale(p: &Problem, va: u32, vb: u32) -> String {
    let c = p.answer();
    let yes = |v: u32| if v == c { "yes" } else { "no" };
    let label = if va == c { "A" } else { "B" };
    format!("{THINK}{} so {c}. A {va} vs {c} {}. B {vb} vs {c} {}.{THINK_END}{ANSWER}{label}{ANSWER_END}", p.work(), yes(va), yes(vb))
}

/// Short openings people write before working a problem; their varying length keeps the
/// backbone's arithmetic from depending on where the work starts.
pub const OPENINGS: [&str; 8] = ["", "", "", "OK. ", "Let me see. ", "Well, ", "Sure. ", "Check: "];

/// A pretraining document (its prompt and continuation): sometimes two people's answers to
/// the question first (right or wrong, in any style: answers sit around questions in real
/// text) and, half of those times, a claim for one of them at random; then the question, an
/// opening and the worked steps, and, when there were answers, what each of them says and
/// whether they agree (`A 49. B 48. They differ.`). A pretrained LLM can compute, read back
/// what a text says and tell equal numbers; the backbone learns the first two here, and is
/// measured not to learn the third (BENCHMARKS.md, "Demo: what the numbers say"). No judgment
/// is ever written: deciding which answer is right is what the reward models have to learn.
pub fn pretrain_text(rng: &mut ChaCha8Rng, p: &Problem) -> (String, String) {
    let mut prompt = String::new();
    let mut restated = String::new();
    if rng.random_bool(0.4) {
        let wrongs = p.wrong_answers();
        let value = |rng: &mut ChaCha8Rng| if rng.random_bool(0.5) { p.answer() } else { wrongs[rng.random_range(0..wrongs.len())] };
        let (va, vb) = (value(rng), value(rng));
        let (a, b) = (styled(va, rng.random_range(0..STYLES.len())), styled(vb, rng.random_range(0..STYLES.len())));
        prompt.push_str(&format!("A: {a}\nB: {b}\n"));
        // Sometimes a third person's claim about them, as often wrong as right: text is full of
        // claims, and a pretrained LLM still works the sum out after one. The prover's prompt
        // carries a claim (`Claim A.`); without such lines the backbone's arithmetic after
        // one fell from 99% to 69% right (`examples/backbone_eval.rs`, seed 0), and the
        // prover's proofs inherited it.
        if rng.random_bool(0.5) {
            prompt.push_str(&claim_line(if rng.random_bool(0.5) { Label::A } else { Label::B }));
        }
        // Whether the two people agree: reading numbers for equality is a skill a pretrained
        // LLM has; which of them is right is never said.
        restated = format!(" A {va}. B {vb}. They {}.", if va == vb { "agree" } else { "differ" });
    }
    prompt.push_str(&format!("Q: {} ", p.question()));
    let opening = OPENINGS[rng.random_range(0..OPENINGS.len())];
    (prompt, format!("{opening}{THINK}{} so {}.{restated}{THINK_END}", p.work(), p.answer()))
}

/// The characters every demo text is made of (the tokenizer's alphabet).
pub const ALPHABET: &str = "0123456789+-=?.:*, \nABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Every question of the domain: a + b and a − b (a > b) for two-digit a, b.
pub fn all_problems() -> Vec<Problem> {
    let mut v = Vec::new();
    for a in 10..100 {
        for b in 10..100 {
            v.push(Problem { a, b, op: Op::Add });
            if a > b {
                v.push(Problem { a, b, op: Op::Sub });
            }
        }
    }
    v
}

/// Sizes of the demo's data sets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DomainSizes {
    /// Pairs with human-style rationales.
    pub seed: usize,
    /// Labeled pairs without rationales.
    pub labeled: usize,
    /// Unlabeled pairs (labels hidden, kept aside to measure pseudo-label accuracy).
    pub unlabeled: usize,
    /// Held-out test pairs, on questions no training set or pretraining line uses.
    pub test: usize,
    /// Pretraining lines for the backbone.
    pub pretrain: usize,
}

/// A pair with its hidden facts: the problem and which response is right.
#[derive(Debug, Clone)]
pub struct DemoPair {
    pub pair: PreferencePair,
    pub problem: Problem,
}

pub struct Domain {
    pub seed: Vec<PreferencePair>,
    pub labeled: Vec<PreferencePair>,
    /// Without labels.
    pub unlabeled: Vec<PreferencePair>,
    /// The hidden labels of `unlabeled`, in the same order.
    pub unlabeled_truth: Vec<Label>,
    pub test: Vec<PreferencePair>,
    pub pretrain: Vec<(String, String)>,
    /// Best-of-n lists on test questions: [`CANDIDATES_PER_LIST`] answers, one to three of
    /// them right, each in a random style, with per-answer correctness (for `gramrr eval ppe`
    /// and `gramrr rank`).
    pub candidates: Vec<CandidateList>,
}

/// Answers in each best-of-n list.
pub const CANDIDATES_PER_LIST: usize = 8;
/// Best-of-n lists (on the first test questions).
pub const CANDIDATE_LISTS: usize = 200;

/// Best-of-n lists for `problems`, from their own random stream so that adding them changed
/// no other set.
fn candidate_lists(seed: u64, problems: &[Problem]) -> Vec<CandidateList> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6361_6e64);
    problems
        .iter()
        .take(CANDIDATE_LISTS)
        .enumerate()
        .map(|(i, p)| {
            let n_right = rng.random_range(1..=3);
            let wrongs = p.wrong_answers();
            let mut values: Vec<(u32, bool)> = (0..CANDIDATES_PER_LIST)
                .map(|k| if k < n_right { (p.answer(), true) } else { (wrongs[rng.random_range(0..wrongs.len())], false) })
                .collect();
            values.shuffle(&mut rng);
            CandidateList {
                id: format!("bon-{i:05}"),
                prompt: Conversation::Text(p.question()),
                responses: values.iter().map(|&(v, _)| styled(v, rng.random_range(0..STYLES.len()))).collect(),
                correct: Some(values.iter().map(|&(_, ok)| ok).collect()),
                scores: None,
                best: None,
                metadata: Default::default(),
            }
        })
        .collect()
}

fn make_pair(rng: &mut ChaCha8Rng, p: &Problem, id: String, with_rationale: bool) -> PreferencePair {
    let c = p.answer();
    let wrongs = p.wrong_answers();
    let w = wrongs[rng.random_range(0..wrongs.len())];
    let (sc, sw) = (rng.random_range(0..STYLES.len()), rng.random_range(0..STYLES.len()));
    let right_first = rng.random_bool(0.5);
    let (va, vb, sa, sb) = if right_first { (c, w, sc, sw) } else { (w, c, sw, sc) };
    let mut metadata = serde_json::Map::new();
    metadata.insert("style_a".into(), STYLES[sa].into());
    metadata.insert("style_b".into(), STYLES[sb].into());
    metadata.insert("answer".into(), c.into());
    PreferencePair {
        id,
        prompt: Conversation::Text(p.question()),
        response_a: styled(va, sa),
        response_b: styled(vb, sb),
        label: Some(if right_first { Label::A } else { Label::B }),
        rationale: with_rationale.then(|| rationale(p, va, vb)),
        metadata,
    }
}

impl Domain {
    /// Builds every set from `seed`. Test questions are drawn first and never reused.
    pub fn generate(seed: u64, sizes: &DomainSizes) -> Domain {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6772_616d_7272);
        let mut problems = all_problems();
        problems.shuffle(&mut rng);
        let n_test = sizes.test.min(problems.len() / 4);
        let (test_q, train_q) = problems.split_at(n_test);
        let test_set: HashSet<Problem> = test_q.iter().copied().collect();
        debug_assert!(train_q.iter().all(|p| !test_set.contains(p)));
        let pick = |rng: &mut ChaCha8Rng| train_q[rng.random_range(0..train_q.len())];
        let set = |rng: &mut ChaCha8Rng, name: &str, n: usize, rat: bool| -> Vec<PreferencePair> {
            (0..n).map(|i| { let p = pick(rng); make_pair(rng, &p, format!("{name}-{i:05}"), rat) }).collect()
        };
        let seed_set = set(&mut rng, "seed", sizes.seed, true);
        let labeled = set(&mut rng, "labeled", sizes.labeled, false);
        let mut unlabeled = set(&mut rng, "unlabeled", sizes.unlabeled, false);
        let unlabeled_truth = unlabeled.iter_mut().map(|p| p.label.take().expect("generated pairs are labeled")).collect();
        let test = test_q.iter().enumerate().map(|(i, p)| make_pair(&mut rng, p, format!("test-{i:05}"), false)).collect();
        let pretrain = (0..sizes.pretrain)
            .map(|_| {
                let p = pick(&mut rng);
                pretrain_text(&mut rng, &p)
            })
            .collect();
        let candidates = candidate_lists(seed, test_q);
        Domain { seed: seed_set, labeled, unlabeled, unlabeled_truth, test, pretrain, candidates }
    }
}

/// Whether a proof's (or rationale's) stated computation is right: the reversed-digit work
/// and the result it states both match the question. The domain can check this; the pipeline
/// never does.
pub fn computation_correct(question: &str, text: &str) -> bool {
    let Some(p) = Problem::parse(question) else { return false };
    let Some(start) = text.find(THINK) else { return false };
    let body = &text[start + THINK.len()..];
    let want = format!("{} so {}.", p.work(), p.answer());
    body.starts_with(&want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CompactFormat, PairFormat};

    fn sizes() -> DomainSizes {
        DomainSizes { seed: 30, labeled: 50, unlabeled: 80, test: 100, pretrain: 40 }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = Domain::generate(7, &sizes());
        let b = Domain::generate(7, &sizes());
        let c = Domain::generate(8, &sizes());
        assert_eq!(a.labeled, b.labeled);
        assert_eq!(a.test, b.test);
        assert_eq!(a.pretrain, b.pretrain);
        assert_ne!(a.labeled, c.labeled);
    }

    #[test]
    fn labels_name_the_right_answer_and_rationales_are_consistent() {
        let d = Domain::generate(3, &sizes());
        let f = CompactFormat::default();
        let all = d.seed.iter().chain(&d.labeled).chain(&d.test);
        for p in all {
            let prob = Problem::parse(&p.prompt.as_text()).unwrap();
            let value = |r: &str| -> u32 { r.chars().filter(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap() };
            let (va, vb) = (value(&p.response_a), value(&p.response_b));
            assert_ne!(va, vb);
            let right = if p.label == Some(Label::A) { va } else { vb };
            assert_eq!(right, prob.answer(), "{p:?}");
        }
        for p in &d.seed {
            let z = p.rationale.as_ref().unwrap();
            let proof = f.rationale_to_proof(z).unwrap();
            assert!(f.check_proof(p, &proof, p.label.unwrap()).is_ok(), "{proof}");
            assert!(computation_correct(&p.prompt.as_text(), z));
        }
        assert!(d.unlabeled.iter().all(|p| p.label.is_none()));
        assert_eq!(d.unlabeled_truth.len(), d.unlabeled.len());
    }

    #[test]
    fn best_of_n_lists_mark_exactly_the_right_answers() {
        let d = Domain::generate(4, &sizes());
        assert_eq!(d.candidates.len(), sizes().test.min(CANDIDATE_LISTS));
        let test_q: HashSet<String> = d.test.iter().map(|p| p.prompt.as_text()).collect();
        for c in &d.candidates {
            assert!(test_q.contains(&c.prompt.as_text()), "lists use held-out questions");
            let p = Problem::parse(&c.prompt.as_text()).unwrap();
            let flags = c.correct.as_ref().unwrap();
            assert_eq!(c.responses.len(), CANDIDATES_PER_LIST);
            let n_right = flags.iter().filter(|f| **f).count();
            assert!((1..=3).contains(&n_right), "{c:?}");
            for (r, &ok) in c.responses.iter().zip(flags) {
                let v: u32 = r.chars().filter(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap();
                assert_eq!(v == p.answer(), ok, "{r:?} for {}", p.question());
            }
        }
    }

    #[test]
    fn test_questions_are_held_out() {
        let d = Domain::generate(5, &sizes());
        let test_q: HashSet<String> = d.test.iter().map(|p| p.prompt.as_text()).collect();
        assert_eq!(test_q.len(), d.test.len(), "test questions are distinct");
        for p in d.seed.iter().chain(&d.labeled).chain(&d.unlabeled) {
            assert!(!test_q.contains(&p.prompt.as_text()));
        }
        for (prompt, _) in &d.pretrain {
            let q = prompt.rsplit("Q: ").next().unwrap().trim_end();
            assert!(Problem::parse(q).is_some(), "{prompt:?}");
            assert!(!test_q.contains(q));
        }
    }

    #[test]
    fn pretraining_claims_are_as_often_wrong_as_right() {
        let d = Domain::generate(3, &DomainSizes { pretrain: 4000, ..sizes() });
        let value = |line: &str| -> u32 { line.chars().filter(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap() };
        let (mut claims, mut right, mut with_answers) = ([0usize; 2], 0usize, 0usize);
        for (prompt, _) in &d.pretrain {
            let lines: Vec<&str> = prompt.lines().collect();
            if !prompt.starts_with("A: ") {
                assert!(!prompt.contains("Claim"), "a claim without answers: {prompt:?}");
                continue;
            }
            with_answers += 1;
            let Some(i) = [Label::A, Label::B].iter().position(|&l| lines[2] == claim_line(l).trim_end()) else { continue };
            claims[i] += 1;
            let p = Problem::parse(lines.last().unwrap().trim_start_matches("Q: ").trim_end()).unwrap();
            right += (value(lines[i]) == p.answer()) as usize;
        }
        let n = claims[0] + claims[1];
        let share = |k: usize, of: usize| k as f64 / of as f64;
        assert!((0.4..0.6).contains(&share(n, with_answers)), "{n} claims in {with_answers} documents with answers");
        assert!((0.4..0.6).contains(&share(claims[0], n)), "claims A/B {claims:?}");
        assert!((0.4..0.6).contains(&share(right, n)), "{right} of {n} claims right");
    }

    #[test]
    fn arithmetic_helpers() {
        let p = Problem { a: 63, b: 15, op: Op::Sub };
        assert_eq!((p.question(), p.work(), p.answer()), ("63-15?".to_string(), "36-51=84".to_string(), 48));
        assert_eq!(Problem::parse("63-15?"), Some(p));
        let q = Problem { a: 87, b: 45, op: Op::Add };
        assert_eq!(q.work(), "78+54=231");
        assert!(q.wrong_answers().contains(&122), "dropped carry");
        assert!(!q.wrong_answers().contains(&132));
        for p in all_problems() {
            assert!(!p.wrong_answers().is_empty());
        }
        assert!(computation_correct("63-15?", "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think>So B."));
        assert!(!computation_correct("63-15?", "<think>36-51=94 so 49. A 49 vs 49 yes. B 48 vs 49 no.</think>So A."));
    }
}

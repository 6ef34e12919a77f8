//! Where rewards come from: a generative reward model judging the responses, a command that
//! scores them, a `gramrr serve` URL, a Rust closure, or a weighted sum of these.
//!
//! Every source scores whole groups (the G responses sampled for one prompt) in one call, so a
//! judge can compare responses within a group and batch every comparison of a step.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

use gramrr_judge::reward::{reference_rewards, ReferenceItem};
use gramrr_judge::{ListRanker, PairwiseJudge, RankInput, StrategyKind};
use serde_json::{json, Value};

use crate::error::{Result, RlError};

/// One prompt's sampled responses, to be scored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardGroup {
    /// The prompt as the judge sees it (the user's message).
    pub prompt: String,
    /// A reference answer, where the prompt record has one.
    pub reference: Option<String>,
    pub responses: Vec<String>,
}

/// A step's rewards: `rewards[i][g]` for response g of group i.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewardBatch {
    pub rewards: Vec<Vec<f64>>,
    /// Reward-model calls: pairwise comparisons for a judge, items for a command or closure.
    pub calls: usize,
    /// For mixtures: each component's name, weight and mean reward over the batch.
    pub parts: Vec<(String, f64, f64)>,
}

/// A source of scalar rewards.
pub trait RewardModel: Send + Sync {
    /// A short description for logs, reports and the run's settings hash.
    fn name(&self) -> String;
    /// One reward per response, in order.
    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch>;
}

/// How a judge turns comparisons within a group into one reward per response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupScore {
    /// Bradley–Terry log-strength fitted to a round robin's soft wins.
    #[default]
    BradleyTerry,
    /// Soft win rate in the round robin.
    WinRate,
}

impl std::str::FromStr for GroupScore {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bt" | "bradley-terry" => Ok(GroupScore::BradleyTerry),
            "win-rate" => Ok(GroupScore::WinRate),
            _ => Err(format!("unknown group score {s:?}: expected bt or win-rate")),
        }
    }
}

/// A generative reward model as the reward: each response is compared with the prompt's
/// reference answer when it has one (reward = P(response better than reference), both orders
/// as the judge is configured), otherwise with the other responses of its group in a round
/// robin (all pairs, or `opponents` each) fitted with Bradley–Terry.
pub struct JudgeReward {
    pub judge: PairwiseJudge,
    pub opponents: Option<usize>,
    pub score: GroupScore,
    /// Compare with the reference where there is one; off: always within the group.
    pub use_reference: bool,
}

impl JudgeReward {
    pub fn new(judge: PairwiseJudge) -> Self {
        JudgeReward { judge, opponents: None, score: GroupScore::BradleyTerry, use_reference: true }
    }
}

impl RewardModel for JudgeReward {
    fn name(&self) -> String {
        format!(
            "judge({}, {}, {})",
            self.judge.backend().name(),
            self.judge.config.mode,
            match self.score {
                GroupScore::BradleyTerry => "bt",
                GroupScore::WinRate => "win-rate",
            }
        )
    }

    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch> {
        let mut rewards: Vec<Vec<f64>> = groups.iter().map(|g| vec![0.0; g.responses.len()]).collect();
        let mut calls = 0;
        // Against the reference: every response of every such group in one batch.
        let mut items = vec![];
        let mut at = vec![];
        let mut lists = vec![];
        let mut list_at = vec![];
        for (i, g) in groups.iter().enumerate() {
            match (&g.reference, self.use_reference) {
                (Some(r), true) => {
                    for (k, resp) in g.responses.iter().enumerate() {
                        items.push(ReferenceItem { user_input: g.prompt.clone(), response: resp.clone(), reference: r.clone() });
                        at.push((i, k));
                    }
                }
                _ => {
                    lists.push(RankInput { id: i.to_string(), user_input: g.prompt.clone(), responses: g.responses.clone() });
                    list_at.push(i);
                }
            }
        }
        if !items.is_empty() {
            for ((i, k), (p, _)) in at.into_iter().zip(reference_rewards(&self.judge, &items)?) {
                rewards[i][k] = p;
            }
            calls += items.len();
        }
        if !lists.is_empty() {
            let ranker = ListRanker::new(self.judge.clone(), StrategyKind::RoundRobin { opponents: self.opponents });
            for (i, o) in list_at.into_iter().zip(ranker.rank_batch(&lists)?) {
                calls += o.ranking.comparisons;
                rewards[i] = match self.score {
                    GroupScore::BradleyTerry => o.ranking.scores.clone(),
                    GroupScore::WinRate => o.ranking.win_rate.clone(),
                };
            }
        }
        Ok(RewardBatch { rewards, calls, parts: vec![] })
    }
}

/// Any program as the reward: it reads JSONL on stdin, one `{"prompt", "response",
/// "reference"?}` object per response (group by group), and writes JSONL on stdout, one
/// `{"score": number}` per input line, in order. Run once per step with `sh -c`.
pub struct CommandReward {
    pub command: String,
}

impl CommandReward {
    pub fn new(command: impl Into<String>) -> Self {
        CommandReward { command: command.into() }
    }
    fn err(&self, message: String) -> RlError {
        RlError::RewardCommand { command: self.command.clone(), message }
    }
}

impl RewardModel for CommandReward {
    fn name(&self) -> String {
        format!("command({})", self.command)
    }

    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch> {
        let mut input = String::new();
        for g in groups {
            for r in &g.responses {
                let mut o = json!({"prompt": g.prompt, "response": r});
                if let Some(rf) = &g.reference {
                    o["reference"] = json!(rf);
                }
                input.push_str(&o.to_string());
                input.push('\n');
            }
        }
        let n: usize = groups.iter().map(|g| g.responses.len()).sum();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.err(format!("cannot start: {e}")))?;
        // Written from a thread: a command that answers line by line would otherwise fill its
        // stdout pipe while we are still blocked writing its stdin.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let mut stdout = String::new();
        child.stdout.take().expect("piped stdout").read_to_string(&mut stdout).map_err(|e| self.err(format!("reading its output: {e}")))?;
        let mut stderr = String::new();
        let _ = child.stderr.take().expect("piped stderr").read_to_string(&mut stderr);
        let status = child.wait().map_err(|e| self.err(format!("waiting for it: {e}")))?;
        let wrote = writer.join().expect("the writer thread does not panic");
        let tail = |s: &str| {
            let s = s.trim();
            let start = s.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
            s[start..].to_string()
        };
        if !status.success() {
            return Err(self.err(format!("exited with {status}; stderr: {}", tail(&stderr))));
        }
        if let Err(e) = wrote {
            return Err(self.err(format!("stopped reading its input after part of {n} lines: {e}")));
        }
        let mut scores = Vec::with_capacity(n);
        for (i, line) in stdout.as_bytes().lines().enumerate() {
            let line = line.map_err(|e| self.err(format!("output line {}: {e}", i + 1)))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| self.err(format!("output line {}: not JSON ({e}): {:?}", i + 1, tail(&line))))?;
            let s = v
                .get("score")
                .ok_or_else(|| self.err(format!("output line {}: no \"score\" field in {}", i + 1, tail(&line))))?
                .as_f64()
                .ok_or_else(|| self.err(format!("output line {}: \"score\" is not a number in {}", i + 1, tail(&line))))?;
            if !s.is_finite() {
                return Err(self.err(format!("output line {}: \"score\" is {s}", i + 1)));
            }
            scores.push(s);
        }
        if scores.len() != n {
            return Err(self.err(format!("wrote {} scores for {n} responses (one {{\"score\": number}} line per input line)", scores.len())));
        }
        let mut it = scores.into_iter();
        let rewards = groups.iter().map(|g| it.by_ref().take(g.responses.len()).collect()).collect();
        Ok(RewardBatch { rewards, calls: n, parts: vec![] })
    }
}

type RewardFnBox = Box<dyn Fn(&str, &str, Option<&str>) -> f64 + Send + Sync>;

/// A Rust closure `(prompt, response, reference) -> reward` (rule rewards, verifiers, tests).
pub struct FnReward {
    pub name: String,
    f: RewardFnBox,
}

impl FnReward {
    pub fn new(name: impl Into<String>, f: impl Fn(&str, &str, Option<&str>) -> f64 + Send + Sync + 'static) -> Self {
        FnReward { name: name.into(), f: Box::new(f) }
    }
}

impl RewardModel for FnReward {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch> {
        let rewards: Vec<Vec<f64>> =
            groups.iter().map(|g| g.responses.iter().map(|r| (self.f)(&g.prompt, r, g.reference.as_deref())).collect()).collect();
        if let Some(bad) = rewards.iter().flatten().find(|x| !x.is_finite()) {
            return Err(RlError::Reward { name: self.name.clone(), message: format!("returned {bad}") });
        }
        Ok(RewardBatch { calls: rewards.iter().map(|r| r.len()).sum(), rewards, parts: vec![] })
    }
}

/// A weighted sum of rewards (e.g. the judge plus a rule verifier).
pub struct MixedReward {
    pub parts: Vec<(f64, Box<dyn RewardModel>)>,
}

impl RewardModel for MixedReward {
    fn name(&self) -> String {
        let p: Vec<String> = self.parts.iter().map(|(w, r)| format!("{w}×{}", r.name())).collect();
        p.join(" + ")
    }
    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch> {
        let mut out = RewardBatch { rewards: groups.iter().map(|g| vec![0.0; g.responses.len()]).collect(), calls: 0, parts: vec![] };
        for (w, r) in &self.parts {
            let b = r.rewards(groups)?;
            check_shape(&r.name(), groups, &b)?;
            let n: usize = b.rewards.iter().map(|x| x.len()).sum();
            let mean = b.rewards.iter().flatten().sum::<f64>() / n.max(1) as f64;
            for (acc, g) in out.rewards.iter_mut().zip(&b.rewards) {
                for (a, x) in acc.iter_mut().zip(g) {
                    *a += w * x;
                }
            }
            out.calls += b.calls;
            out.parts.push((r.name(), *w, mean));
        }
        Ok(out)
    }
}

/// Checks that a reward source answered one finite reward per response.
pub fn check_shape(name: &str, groups: &[RewardGroup], b: &RewardBatch) -> Result<()> {
    let bad = |m: String| Err(RlError::Reward { name: name.to_string(), message: m });
    if b.rewards.len() != groups.len() {
        return bad(format!("{} reward lists for {} prompts", b.rewards.len(), groups.len()));
    }
    for (i, (r, g)) in b.rewards.iter().zip(groups).enumerate() {
        if r.len() != g.responses.len() {
            return bad(format!("prompt {i}: {} rewards for {} responses", r.len(), g.responses.len()));
        }
        if let Some(x) = r.iter().find(|x| !x.is_finite()) {
            return bad(format!("prompt {i}: reward {x}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<RewardGroup> {
        vec![
            RewardGroup { prompt: "p1".into(), reference: Some("ref".into()), responses: vec!["aa".into(), "b".into()] },
            RewardGroup { prompt: "p2".into(), reference: None, responses: vec!["aaa".into()] },
        ]
    }

    #[test]
    fn command_scores_each_line_in_order() {
        // The score is the response length, read from the JSON the command is given.
        let cmd = CommandReward::new(r#"python3 -c 'import sys,json
for l in sys.stdin: print(json.dumps({"score": len(json.loads(l)["response"]) + (0.5 if "reference" in json.loads(l) else 0)}))'"#);
        let b = match cmd.rewards(&groups()) {
            Ok(b) => b,
            Err(e) if e.to_string().contains("cannot start") || e.to_string().contains("python3: not found") => {
                eprintln!("skipped: python3 is not installed");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(b.rewards, vec![vec![2.5, 1.5], vec![3.0]]);
        assert_eq!(b.calls, 3);
    }

    #[test]
    fn command_errors_are_named() {
        let cases = [
            ("exit 3", "exited with exit status: 3"),
            ("echo oops >&2; exit 1", "oops"),
            ("cat > /dev/null; echo '{\"score\": 1}'", "wrote 1 scores for 3 responses"),
            ("cat > /dev/null; echo 'not json'", "output line 1: not JSON"),
            ("cat > /dev/null; echo '{\"reward\": 1}'", "output line 1: no \"score\" field"),
            ("cat > /dev/null; echo '{\"score\": \"high\"}'", "\"score\" is not a number"),
        ];
        for (cmd, want) in cases {
            let e = CommandReward::new(cmd).rewards(&groups()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(cmd), "{cmd}: {e}");
        }
    }

    #[test]
    fn mixture_is_the_weighted_sum_with_parts() {
        let m = MixedReward {
            parts: vec![
                (1.0, Box::new(FnReward::new("len", |_, r, _| r.len() as f64))),
                (0.5, Box::new(FnReward::new("has-ref", |_, _, rf| rf.is_some() as u8 as f64))),
            ],
        };
        let b = m.rewards(&groups()).unwrap();
        assert_eq!(b.rewards, vec![vec![2.5, 1.5], vec![3.0]]);
        assert_eq!(b.calls, 6);
        assert_eq!(b.parts[0].0, "len");
        assert!((b.parts[1].2 - 2.0 / 3.0).abs() < 1e-12);
    }
}

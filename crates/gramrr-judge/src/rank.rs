//! Many candidates: finding the best and ranking them with a pairwise judge.
//!
//! Each strategy is a small state machine that hands out rounds of comparisons that do not
//! depend on each other and takes their results back. [`ListRanker`] runs the strategies of
//! many candidate lists in lock-step, so each round is one [`PairwiseJudge::judge_batch`]
//! over every list: a knockout over 64 lists of 8 is 3 batches, not 448 calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;

use gramrr_data::{CandidateList, Label};
use serde::{Deserialize, Serialize};

use crate::bt::{BradleyTerryFit, BtOptions, Game};
use crate::error::{JudgeError, Result};
use crate::pairwise::{PairInput, PairVerdict, PairwiseJudge, Usage};

/// One comparison's outcome, `i` shown as A.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatchResult {
    pub i: usize,
    pub j: usize,
    /// P(i better than j), the verdict's `p_a`.
    pub p_i: f64,
    pub winner: usize,
    /// The verdict had a label; otherwise the winner was taken from `p_i`, and from the lower
    /// index at exactly 0.5.
    pub decided: bool,
}

impl MatchResult {
    pub fn from_verdict(i: usize, j: usize, v: &PairVerdict) -> Self {
        let winner = match v.label {
            Some(Label::A) => i,
            Some(Label::B) => j,
            _ if v.p_a > 0.5 => i,
            _ if v.p_a < 0.5 => j,
            _ => i.min(j),
        };
        MatchResult { i, j, p_i: v.p_a, winner, decided: v.label.is_some() }
    }
    pub fn loser(&self) -> usize {
        if self.winner == self.i { self.j } else { self.i }
    }
}

/// Wins and soft wins per candidate, over every comparison so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub wins: Vec<usize>,
    pub soft_wins: Vec<f64>,
    pub games: Vec<usize>,
}

impl Tally {
    fn new(n: usize) -> Self {
        Tally { wins: vec![0; n], soft_wins: vec![0.0; n], games: vec![0; n] }
    }
    fn add(&mut self, r: &MatchResult) {
        self.wins[r.winner] += 1;
        self.soft_wins[r.i] += r.p_i;
        self.soft_wins[r.j] += 1.0 - r.p_i;
        self.games[r.i] += 1;
        self.games[r.j] += 1;
    }
    /// Indices ordered by hard wins, then soft wins, then index.
    fn by_wins(&self, candidates: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut v: Vec<usize> = candidates.into_iter().collect();
        v.sort_by(|&a, &b| {
            self.wins[b].cmp(&self.wins[a]).then(self.soft_wins[b].total_cmp(&self.soft_wins[a])).then(a.cmp(&b))
        });
        v
    }
}

/// A ranking procedure as a state machine over rounds of independent comparisons.
pub trait RankingStrategy: Send {
    /// The next round's comparisons `(i, j)`, `i` shown as A; empty once finished (and on
    /// every call after that).
    fn next_round(&mut self) -> Vec<(usize, usize)>;
    /// The last round's results, in the order they were handed out.
    fn record(&mut self, results: &[MatchResult]);
    /// Best-first order of all candidates and per-candidate scores, once finished.
    fn result(&self, tally: &Tally) -> (Vec<usize>, Vec<f64>);
}

/// The paper's linear search: the current best meets each remaining candidate in turn
/// (n - 1 comparisons, n - 1 rounds). Only the best is meaningful; the rest are ordered by
/// wins. Scores are wins.
#[derive(Debug, Clone)]
pub struct LinearChampionSearch {
    n: usize,
    champion: usize,
    next: usize,
}

impl LinearChampionSearch {
    pub fn new(n: usize) -> Self {
        LinearChampionSearch { n, champion: 0, next: 1 }
    }
}

impl RankingStrategy for LinearChampionSearch {
    fn next_round(&mut self) -> Vec<(usize, usize)> {
        if self.next < self.n { vec![(self.champion, self.next)] } else { vec![] }
    }
    fn record(&mut self, results: &[MatchResult]) {
        if let Some(r) = results.first() {
            self.champion = r.winner;
            self.next += 1;
        }
    }
    fn result(&self, tally: &Tally) -> (Vec<usize>, Vec<f64>) {
        let mut order = vec![self.champion];
        order.extend(tally.by_wins((0..self.n).filter(|&c| c != self.champion)));
        (order, tally.wins.iter().map(|&w| w as f64).collect())
    }
}

/// Single elimination: each round pairs the survivors and is one batch; with an odd count
/// one candidate gets a bye. n - 1 comparisons in ⌈log2 n⌉ rounds. The rest of the order is
/// by the round a candidate went out in (later is better), then wins. Scores are wins.
#[derive(Debug, Clone)]
pub struct KnockoutTournament {
    n: usize,
    survivors: Vec<usize>,
    bye: Option<usize>,
    round: usize,
    /// The round each candidate lost in.
    out_in: Vec<usize>,
}

impl KnockoutTournament {
    pub fn new(n: usize) -> Self {
        KnockoutTournament { n, survivors: (0..n).collect(), bye: None, round: 0, out_in: vec![0; n] }
    }
    /// Whoever is still in.
    pub fn survivors(&self) -> &[usize] {
        &self.survivors
    }
}

impl RankingStrategy for KnockoutTournament {
    fn next_round(&mut self) -> Vec<(usize, usize)> {
        if self.survivors.len() < 2 {
            return vec![];
        }
        self.bye = (self.survivors.len() % 2 == 1).then(|| *self.survivors.last().unwrap());
        self.survivors.chunks_exact(2).map(|c| (c[0], c[1])).collect()
    }
    fn record(&mut self, results: &[MatchResult]) {
        self.round += 1;
        // The bye goes first next round, so with an odd count again a different candidate
        // (the last) sits out.
        let mut next: Vec<usize> = self.bye.take().into_iter().collect();
        for r in results {
            next.push(r.winner);
            self.out_in[r.loser()] = self.round;
        }
        self.survivors = next;
    }
    fn result(&self, tally: &Tally) -> (Vec<usize>, Vec<f64>) {
        let champion = self.survivors.first().copied().unwrap_or(0);
        let mut rest: Vec<usize> = (0..self.n).filter(|&c| c != champion).collect();
        rest.sort_by(|&a, &b| {
            self.out_in[b].cmp(&self.out_in[a]).then(tally.wins[b].cmp(&tally.wins[a])).then(a.cmp(&b))
        });
        let mut order = vec![champion];
        order.extend(rest);
        (order, tally.wins.iter().map(|&w| w as f64).collect())
    }
}

fn position_scores(order: &[usize]) -> Vec<f64> {
    let n = order.len();
    let mut s = vec![0.0; n];
    for (pos, &c) in order.iter().enumerate() {
        s[c] = (n - 1 - pos) as f64;
    }
    s
}

/// A full ranking by repeated selection: a knockout finds the best, it is removed, another
/// knockout runs over the rest. Results are cached, so a pair met again is not judged again
/// (tournament sort). Scores are `n - 1 - position`.
#[derive(Debug, Clone)]
pub struct RepeatedSelection {
    remaining: Vec<usize>,
    ranked: Vec<usize>,
    survivors: Vec<usize>,
    round_pairs: Vec<(usize, usize)>,
    bye: Option<usize>,
    cache: HashMap<(usize, usize), usize>,
}

impl RepeatedSelection {
    pub fn new(n: usize) -> Self {
        RepeatedSelection {
            remaining: (0..n).collect(),
            ranked: vec![],
            survivors: (0..n).collect(),
            round_pairs: vec![],
            bye: None,
            cache: HashMap::new(),
        }
    }
    fn cached(&self, a: usize, b: usize) -> Option<usize> {
        self.cache.get(&(a.min(b), a.max(b))).copied()
    }
    /// Plays out the current round from the cache.
    fn advance(&mut self) {
        let mut next: Vec<usize> = self.bye.take().into_iter().collect();
        for &(a, b) in &self.round_pairs {
            next.push(self.cached(a, b).expect("every pair of a finished round is cached"));
        }
        self.round_pairs.clear();
        self.survivors = next;
    }
}

impl RankingStrategy for RepeatedSelection {
    fn next_round(&mut self) -> Vec<(usize, usize)> {
        loop {
            if self.remaining.len() <= 1 {
                self.ranked.append(&mut self.remaining);
                return vec![];
            }
            if self.survivors.len() == 1 {
                let best = self.survivors[0];
                self.ranked.push(best);
                self.remaining.retain(|&c| c != best);
                self.survivors = self.remaining.clone();
                continue;
            }
            self.bye = (self.survivors.len() % 2 == 1).then(|| *self.survivors.last().unwrap());
            self.round_pairs = self.survivors.chunks_exact(2).map(|c| (c[0], c[1])).collect();
            let todo: Vec<(usize, usize)> =
                self.round_pairs.iter().copied().filter(|&(a, b)| self.cached(a, b).is_none()).collect();
            if !todo.is_empty() {
                return todo;
            }
            self.advance();
        }
    }
    fn record(&mut self, results: &[MatchResult]) {
        for r in results {
            self.cache.insert((r.i.min(r.j), r.i.max(r.j)), r.winner);
        }
        self.advance();
    }
    fn result(&self, _tally: &Tally) -> (Vec<usize>, Vec<f64>) {
        (self.ranked.clone(), position_scores(&self.ranked))
    }
}

/// A full ranking by bottom-up merge sort with the judge as comparator. All merges of a level
/// advance together, one comparison each per round. At most n⌈log2 n⌉ comparisons. Scores
/// are `n - 1 - position`.
#[derive(Debug, Clone)]
pub struct MergeSortRanking {
    runs: Vec<Vec<usize>>,
    merges: Vec<Merge>,
    carried: Option<Vec<usize>>,
    emitted: Vec<usize>,
    sorted: Option<Vec<usize>>,
}

#[derive(Debug, Clone)]
struct Merge {
    left: VecDeque<usize>,
    right: VecDeque<usize>,
    out: Vec<usize>,
}

impl MergeSortRanking {
    pub fn new(n: usize) -> Self {
        MergeSortRanking { runs: (0..n).map(|c| vec![c]).collect(), merges: vec![], carried: None, emitted: vec![], sorted: None }
    }
}

impl RankingStrategy for MergeSortRanking {
    fn next_round(&mut self) -> Vec<(usize, usize)> {
        loop {
            if self.sorted.is_some() {
                return vec![];
            }
            if self.merges.is_empty() {
                if self.runs.len() <= 1 {
                    self.sorted = Some(self.runs.pop().unwrap_or_default());
                    return vec![];
                }
                let mut runs = std::mem::take(&mut self.runs).into_iter();
                while let Some(left) = runs.next() {
                    match runs.next() {
                        Some(right) => self.merges.push(Merge { left: left.into(), right: right.into(), out: vec![] }),
                        None => self.carried = Some(left),
                    }
                }
            }
            self.emitted.clear();
            let mut round = vec![];
            for (k, m) in self.merges.iter_mut().enumerate() {
                if m.left.is_empty() || m.right.is_empty() {
                    m.out.extend(m.left.drain(..));
                    m.out.extend(m.right.drain(..));
                } else {
                    round.push((m.left[0], m.right[0]));
                    self.emitted.push(k);
                }
            }
            if !round.is_empty() {
                return round;
            }
            self.runs = self.merges.drain(..).map(|m| m.out).collect();
            self.runs.extend(self.carried.take());
        }
    }
    fn record(&mut self, results: &[MatchResult]) {
        for (&k, r) in self.emitted.iter().zip(results) {
            let m = &mut self.merges[k];
            let taken = if m.left.front() == Some(&r.winner) { m.left.pop_front() } else { m.right.pop_front() };
            m.out.extend(taken);
        }
        self.emitted.clear();
    }
    fn result(&self, _tally: &Tally) -> (Vec<usize>, Vec<f64>) {
        let order = self.sorted.clone().unwrap_or_default();
        let scores = position_scores(&order);
        (order, scores)
    }
}

/// Round robin in one batch, fitted to Bradley–Terry scores. With `opponents = Some(k)`, each
/// candidate meets about k others on a circulant design (neighbours at distances 1..⌈k/2⌉,
/// which is connected, so every score is comparable) instead of all n - 1.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    n: usize,
    opponents: Option<usize>,
    pub bt: BtOptions,
    /// Fit to the verdicts' probabilities (soft wins) rather than their labels.
    pub soft: bool,
    started: bool,
    games: Vec<Game>,
}

impl RoundRobin {
    pub fn new(n: usize, opponents: Option<usize>) -> Self {
        RoundRobin { n, opponents, bt: BtOptions::default(), soft: true, started: false, games: vec![] }
    }
    /// The comparisons this design makes.
    pub fn schedule(n: usize, opponents: Option<usize>) -> Vec<(usize, usize)> {
        match opponents {
            Some(k) if k < n.saturating_sub(1) => {
                let mut seen = HashSet::new();
                let mut pairs = vec![];
                for d in 1..=k.div_ceil(2).max(1) {
                    for i in 0..n {
                        let j = (i + d) % n;
                        if i != j && seen.insert((i.min(j), i.max(j))) {
                            pairs.push((i, j));
                        }
                    }
                }
                pairs
            }
            _ => (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect(),
        }
    }
    pub fn fit(&self) -> BradleyTerryFit {
        BradleyTerryFit::fit(self.n, &self.games, &self.bt)
    }
}

impl RankingStrategy for RoundRobin {
    fn next_round(&mut self) -> Vec<(usize, usize)> {
        if self.started {
            return vec![];
        }
        self.started = true;
        Self::schedule(self.n, self.opponents)
    }
    fn record(&mut self, results: &[MatchResult]) {
        for r in results {
            let win = if self.soft { r.p_i } else { (r.winner == r.i) as u8 as f64 };
            self.games.push(Game { i: r.i, j: r.j, win });
        }
    }
    fn result(&self, _tally: &Tally) -> (Vec<usize>, Vec<f64>) {
        let fit = self.fit();
        (fit.ranking(), fit.strengths)
    }
}

/// Which strategy [`ListRanker`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum StrategyKind {
    /// The paper's linear champion search (n - 1 sequential comparisons).
    #[default]
    Linear,
    /// Single elimination with byes; each round is one batch.
    Knockout,
    /// Full ranking by merge sort.
    Sort,
    /// Full ranking by repeated knockout selection with a result cache.
    Selection,
    /// Round robin (all pairs, or `opponents` per candidate) and a Bradley–Terry fit.
    RoundRobin { opponents: Option<usize> },
}

impl StrategyKind {
    pub fn build(&self, n: usize, bt: BtOptions, soft: bool) -> Box<dyn RankingStrategy> {
        match *self {
            StrategyKind::Linear => Box::new(LinearChampionSearch::new(n)),
            StrategyKind::Knockout => Box::new(KnockoutTournament::new(n)),
            StrategyKind::Sort => Box::new(MergeSortRanking::new(n)),
            StrategyKind::Selection => Box::new(RepeatedSelection::new(n)),
            StrategyKind::RoundRobin { opponents } => {
                let mut rr = RoundRobin::new(n, opponents);
                rr.bt = bt;
                rr.soft = soft;
                Box::new(rr)
            }
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            StrategyKind::Linear => "linear",
            StrategyKind::Knockout => "knockout",
            StrategyKind::Sort => "sort",
            StrategyKind::Selection => "selection",
            StrategyKind::RoundRobin { .. } => "round-robin",
        }
    }
}

impl FromStr for StrategyKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(StrategyKind::Linear),
            "knockout" => Ok(StrategyKind::Knockout),
            "sort" | "merge-sort" => Ok(StrategyKind::Sort),
            "selection" => Ok(StrategyKind::Selection),
            "round-robin" => Ok(StrategyKind::RoundRobin { opponents: None }),
            _ => Err(format!("unknown strategy {s:?}: expected linear, knockout, sort, selection or round-robin")),
        }
    }
}

/// Candidates for one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankInput {
    pub id: String,
    pub user_input: String,
    pub responses: Vec<String>,
}

impl RankInput {
    pub fn from_list(list: &CandidateList) -> Self {
        RankInput { id: list.id.clone(), user_input: list.prompt.as_text(), responses: list.responses.clone() }
    }
}

/// A ranking of one list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub best: usize,
    /// All candidates, best first.
    pub ranking: Vec<usize>,
    /// The strategy's per-candidate score: Bradley–Terry log-strength (round robin),
    /// `n - 1 - position` (sort, selection), wins (linear, knockout).
    pub scores: Vec<f64>,
    pub wins: Vec<usize>,
    /// Soft wins / games per candidate (0.5 for a candidate that played none).
    pub win_rate: Vec<f64>,
    pub comparisons: usize,
    pub rounds: usize,
    pub matches: Vec<MatchResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankOutcome {
    pub id: String,
    #[serde(flatten)]
    pub ranking: Ranking,
    pub usage: Usage,
}

/// Ranks candidate lists with a pairwise judge, all lists' rounds batched together.
#[derive(Clone)]
pub struct ListRanker {
    pub judge: PairwiseJudge,
    pub strategy: StrategyKind,
    pub bt: BtOptions,
    /// Round robin fits the verdicts' probabilities rather than their labels.
    pub soft: bool,
}

impl ListRanker {
    pub fn new(judge: PairwiseJudge, strategy: StrategyKind) -> Self {
        ListRanker { judge, strategy, bt: BtOptions::default(), soft: true }
    }

    pub fn rank(&self, list: &RankInput) -> Result<RankOutcome> {
        Ok(self.rank_batch(std::slice::from_ref(list))?.pop().expect("one outcome per list"))
    }

    pub fn rank_batch(&self, lists: &[RankInput]) -> Result<Vec<RankOutcome>> {
        if let Some((index, l)) = lists.iter().enumerate().find(|(_, l)| l.responses.is_empty()) {
            return Err(JudgeError::EmptyList { index, id: l.id.clone() });
        }
        let mut states: Vec<Box<dyn RankingStrategy>> =
            lists.iter().map(|l| self.strategy.build(l.responses.len(), self.bt, self.soft)).collect();
        let mut tallies: Vec<Tally> = lists.iter().map(|l| Tally::new(l.responses.len())).collect();
        let mut matches: Vec<Vec<MatchResult>> = vec![vec![]; lists.len()];
        let mut usage = vec![Usage::default(); lists.len()];
        let mut rounds = vec![0usize; lists.len()];
        let mut done = vec![false; lists.len()];
        loop {
            let mut asked: Vec<(usize, usize, usize)> = vec![];
            for (l, state) in states.iter_mut().enumerate() {
                if done[l] {
                    continue;
                }
                let round = state.next_round();
                if round.is_empty() {
                    done[l] = true;
                }
                asked.extend(round.into_iter().map(|(i, j)| (l, i, j)));
            }
            if asked.is_empty() {
                break;
            }
            let inputs: Vec<PairInput> = asked
                .iter()
                .map(|&(l, i, j)| PairInput::new(lists[l].user_input.clone(), lists[l].responses[i].clone(), lists[l].responses[j].clone()))
                .collect();
            let verdicts = self.judge.judge_batch(&inputs)?;
            let mut per_list: Vec<Vec<MatchResult>> = vec![vec![]; lists.len()];
            for (&(l, i, j), v) in asked.iter().zip(&verdicts) {
                let r = MatchResult::from_verdict(i, j, v);
                tallies[l].add(&r);
                usage[l] += v.usage;
                per_list[l].push(r);
            }
            for (l, results) in per_list.into_iter().enumerate() {
                if !results.is_empty() {
                    rounds[l] += 1;
                    states[l].record(&results);
                    matches[l].extend(results);
                }
            }
        }
        Ok(lists
            .iter()
            .enumerate()
            .map(|(l, list)| {
                let tally = &tallies[l];
                let (ranking, scores) = states[l].result(tally);
                let win_rate = tally
                    .games
                    .iter()
                    .zip(&tally.soft_wins)
                    .map(|(&g, &s)| if g > 0 { s / g as f64 } else { 0.5 })
                    .collect();
                RankOutcome {
                    id: list.id.clone(),
                    ranking: Ranking {
                        best: ranking[0],
                        ranking,
                        scores,
                        wins: tally.wins.clone(),
                        win_rate,
                        comparisons: matches[l].len(),
                        rounds: rounds[l],
                        matches: std::mem::take(&mut matches[l]),
                    },
                    usage: usage[l],
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a strategy against a hidden total order (higher index = better unless `rank`
    /// says otherwise); returns the strategy's order, the comparisons and the round sizes.
    fn play(mut s: Box<dyn RankingStrategy>, quality: &[f64]) -> (Vec<usize>, usize, Vec<usize>) {
        let n = quality.len();
        let mut tally = Tally::new(n);
        let (mut comps, mut sizes) = (0, vec![]);
        loop {
            let round = s.next_round();
            if round.is_empty() {
                break;
            }
            sizes.push(round.len());
            let results: Vec<MatchResult> = round
                .iter()
                .map(|&(i, j)| {
                    let p = if quality[i] > quality[j] { 1.0 } else { 0.0 };
                    MatchResult { i, j, p_i: p, winner: if p > 0.5 { i } else { j }, decided: true }
                })
                .collect();
            comps += results.len();
            results.iter().for_each(|r| tally.add(r));
            s.record(&results);
        }
        assert!(s.next_round().is_empty(), "a finished strategy stays finished");
        (s.result(&tally).0, comps, sizes)
    }

    fn qualities(n: usize) -> Vec<f64> {
        // A shuffled total order so that index order is no hint.
        (0..n).map(|i| crate::seed::unit(crate::seed::mix(&[i as u64, n as u64]))).collect()
    }

    fn true_order(q: &[f64]) -> Vec<usize> {
        let mut o: Vec<usize> = (0..q.len()).collect();
        o.sort_by(|&a, &b| q[b].total_cmp(&q[a]));
        o
    }

    #[test]
    fn every_strategy_finds_the_true_best() {
        for n in [1, 2, 3, 5, 6, 7, 8, 13] {
            let q = qualities(n);
            let best = true_order(&q)[0];
            for kind in [StrategyKind::Linear, StrategyKind::Knockout, StrategyKind::Sort, StrategyKind::Selection, StrategyKind::RoundRobin { opponents: None }] {
                let (order, _, _) = play(kind.build(n, BtOptions::default(), true), &q);
                assert_eq!(order[0], best, "{kind:?} n={n}");
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{kind:?} n={n} returns a permutation");
            }
        }
    }

    #[test]
    fn full_rankings_recover_the_hidden_order() {
        for n in [2, 5, 8, 11] {
            let q = qualities(n);
            for kind in [StrategyKind::Sort, StrategyKind::Selection, StrategyKind::RoundRobin { opponents: None }] {
                let (order, _, _) = play(kind.build(n, BtOptions::default(), true), &q);
                assert_eq!(order, true_order(&q), "{kind:?} n={n}");
            }
        }
    }

    #[test]
    fn knockout_with_byes_uses_n_minus_1_comparisons_in_log_rounds() {
        for n in [3, 5, 6, 7, 9, 12] {
            let (_, comps, sizes) = play(Box::new(KnockoutTournament::new(n)), &qualities(n));
            assert_eq!(comps, n - 1, "n={n}");
            assert_eq!(sizes.len(), (n as f64).log2().ceil() as usize, "n={n}: {sizes:?}");
        }
        let (_, _, sizes) = play(Box::new(KnockoutTournament::new(7)), &qualities(7));
        assert_eq!(sizes, vec![3, 2, 1]);
    }

    #[test]
    fn linear_search_is_n_minus_1_sequential_comparisons() {
        let (_, comps, sizes) = play(Box::new(LinearChampionSearch::new(9)), &qualities(9));
        assert_eq!(comps, 8);
        assert!(sizes.iter().all(|&s| s == 1));
    }

    #[test]
    fn merge_sort_stays_within_n_log_n() {
        for n in [4, 9, 16, 20] {
            let (_, comps, _) = play(Box::new(MergeSortRanking::new(n)), &qualities(n));
            assert!(comps <= n * (n as f64).log2().ceil() as usize, "n={n}: {comps}");
        }
    }

    #[test]
    fn selection_cache_avoids_rejudging() {
        let n = 8;
        let (_, comps, _) = play(Box::new(RepeatedSelection::new(n)), &qualities(n));
        assert!(comps < n * (n - 1) / 2, "{comps} comparisons; a plain repeated knockout takes 28");
    }

    #[test]
    fn sparse_round_robin_is_connected_and_smaller() {
        let pairs = RoundRobin::schedule(10, Some(4));
        assert_eq!(pairs.len(), 20);
        let mut degree = [0; 10];
        for &(i, j) in &pairs {
            degree[i] += 1;
            degree[j] += 1;
        }
        assert!(degree.iter().all(|&d| d == 4), "{degree:?}");
        assert_eq!(RoundRobin::schedule(5, Some(10)).len(), 10);
        let q = qualities(12);
        let (order, comps, _) = play(StrategyKind::RoundRobin { opponents: Some(4) }.build(12, BtOptions::default(), true), &q);
        assert_eq!(comps, 24);
        // With 4 games each the order is an estimate, not exact: most pairs still come out right.
        let pos: Vec<usize> = (0..12).map(|c| order.iter().position(|&o| o == c).unwrap()).collect();
        let (mut concordant, mut total) = (0, 0);
        for a in 0..12 {
            for b in 0..12 {
                if q[a] > q[b] {
                    total += 1;
                    concordant += (pos[a] < pos[b]) as usize;
                }
            }
        }
        assert!(concordant as f64 / total as f64 > 0.8, "{concordant}/{total}");
    }
}

//! Training a stage elsewhere: with an external command (`[X.train] backend = "command"`: TRL,
//! LLaMA-Factory, under accelerate / DeepSpeed / FSDP), or on another cluster (`gramrr
//! export-sft`, then `gramrr pipeline run --resume --stage-model STAGE=DIR`).
//!
//! It lives in the pipeline, not in gramrr-train, because everything here is about a pipeline
//! stage: its name, its `[X.train]` table, its starting model, its run directory, and the rule
//! that a stage is recorded only when a usable model came back. gramrr-train stays the
//! in-process trainer; the only parts of it used here are its batch plan (so that an external
//! trainer can follow the same order) and its LoRA merge.
//!
//! What gramrr writes for a stage (`STAGE_DIR/train/data/`, see [`export`]):
//!
//! | file | reader | carries |
//! |---|---|---|
//! | `tokens.jsonl` | `tools/trl_sft.py`, any TRL pre-tokenized dataset | exact token ids, `completion_mask`, per-token `weights` |
//! | `schedule.json` | `tools/trl_sft.py` | the built-in trainer's micro-batches per optimizer step |
//! | `prompt_completion.jsonl` | TRL `SFTTrainer` (prompt-completion) | text; no weights |
//! | `messages.jsonl` | TRL `SFTTrainer` (conversational) | text as chat turns; no weights |
//! | `llamafactory/` | LLaMA-Factory (`dataset_info.json`, alpaca and sharegpt files, `train.json`) | text; no weights |
//! | `train_config.json` | the command | every hyperparameter, in TRL's `SFTConfig` names |
//! | `README.md` | people | the fields, and what each format loses |
//!
//! The command must leave in `{out}` either an HF checkpoint (`config.json` and safetensors) of
//! the same architecture, shapes and vocabulary as the stage's starting model, or a PEFT LoRA
//! adapter (`adapter_config.json`, `adapter_model.safetensors`), which gramrr merges into the
//! starting model. Anything else fails the stage, which is then not recorded as done.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::{ChatMessage, Decoder, DecoderConfig, WeightDType};
use gramrr_train::trainer::{total_steps, Plan};
use gramrr_train::{DataStats, SftConfig, SftExample, TrainReport};
use serde_json::{json, Value};

use crate::config::TrainConfig;
use crate::error::{PipelineError, Result};

/// The placeholders a `command` may use, with what they become (each substituted value is
/// shell-quoted). `{{` and `}}` are literal braces.
pub const PLACEHOLDERS: [(&str, &str); 12] = [
    ("model", "the stage's starting model (an HF checkpoint directory)"),
    ("data", "the directory of the stage's exported data (STAGE_DIR/train/data)"),
    ("tokens", "{data}/tokens.jsonl: token ids, completion mask and loss weights"),
    ("config", "{data}/train_config.json: the hyperparameters"),
    ("llamafactory", "{data}/llamafactory/train.json: LLaMA-Factory's arguments for this stage"),
    ("out", "where the command leaves its HF checkpoint or PEFT adapter (emptied before each run)"),
    ("work", "a directory kept across reruns, for the trainer's own checkpoints"),
    ("stage", "the stage's name (prover, rm, iter1/rm, final, ...)"),
    ("lora_rank", "the LoRA rank, 0 for full fine-tuning"),
    ("steps", "optimizer steps (as the built-in trainer would take)"),
    ("seed", "the stage's seed"),
    ("lr", "the peak learning rate"),
];

/// How many lines of a failed command's output the error carries.
const TAIL_LINES: usize = 20;

/// Checks that every `{name}` in `command` is a known placeholder.
pub fn check_placeholders(command: &str) -> std::result::Result<(), String> {
    expand(command, &|_| Some(String::new())).map(|_| ())
}

/// Substitutes `{name}` with `value(name)` (shell-quoted); `{{`/`}}` are literal braces.
fn expand(command: &str, value: &dyn Fn(&str) -> Option<String>) -> std::result::Result<String, String> {
    let known: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("a lone '}' (write '}}' for a literal brace)".into());
        }
        let end = tail.find('}').ok_or("an unclosed '{' (write '{{' for a literal brace)")?;
        let name = &tail[1..end];
        if !known.contains(&name) {
            return Err(format!("unknown placeholder {{{name}}}; known: {}", known.iter().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")));
        }
        out.push_str(&shell_quote(&value(name).unwrap_or_default()));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One training stage as an external trainer sees it.
pub struct StageJob<'a> {
    pub stage: &'a str,
    /// The model the stage starts from.
    pub init: &'a Path,
    pub tok: &'a TextTokenizer,
    /// The examples the built-in trainer would get (already packed when `pack`).
    pub examples: &'a [SftExample],
    pub tc: &'a TrainConfig,
    /// The built-in trainer's settings for this stage (seed, steps, schedule).
    pub sft: &'a SftConfig,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportSummary {
    pub stage: String,
    pub dir: PathBuf,
    pub base_model: PathBuf,
    pub examples: usize,
    /// Longer than `max_len`: left out, as the built-in trainer does.
    pub skipped: usize,
    pub total_steps: usize,
    pub tokens: usize,
    /// Examples whose decoded text re-encodes to exactly their token ids (prompt with the
    /// tokenizer's special tokens, completion without, plus EOS): for these the text formats
    /// train on the same tokens as `tokens.jsonl`.
    pub text_round_trip: usize,
    /// Prompts recognised as one user turn through the tokenizer's chat template (the others
    /// are written to `messages.jsonl` as a user turn of raw text).
    pub chat_prompts: usize,
    /// Examples with a loss weight other than 1 on some completion token (what the text formats
    /// cannot carry).
    pub weighted_examples: usize,
}

/// The examples the built-in trainer would keep (same length rule) and its batch plan.
fn kept_examples(job: &StageJob) -> (Vec<SftExample>, DataStats) {
    gramrr_train::fit_examples(job.examples, job.sft.max_len, job.sft.truncate)
}

/// The built-in trainer's micro-batches (example indices) for every optimizer step.
fn schedule(examples: &[SftExample], sft: &SftConfig) -> Vec<Vec<Vec<usize>>> {
    let mut plan = Plan::new(examples, sft);
    let total = total_steps(sft, plan.steps_per_epoch);
    (0..total).map(|s| plan.step(s).2).collect()
}

/// Texts of one example for the text formats.
struct ExampleText {
    prompt: String,
    /// The prompt's single user turn, when the prompt is the chat template around one.
    user: Option<String>,
    completion: String,
    round_trips: bool,
}

/// Splits a chat template rendered around a placeholder user turn into (before, after).
fn chat_frame(tok: &TextTokenizer) -> Option<(String, String)> {
    const MARK: &str = "\u{E000}gramrr-user\u{E000}";
    let text = tok.apply_chat_template(&[ChatMessage::new("user", MARK)], true, &Default::default()).ok()?;
    let (a, b) = text.split_once(MARK)?;
    Some((a.to_string(), b.to_string()))
}

fn example_text(tok: &TextTokenizer, ex: &SftExample, added: &[u32], frame: &Option<(String, String)>) -> Result<ExampleText> {
    // The ids the tokenizer adds on its own (a BOS) are left out of the text: every reader
    // adds them again when it encodes the prompt.
    let bare = ex.prompt_ids.strip_prefix(added).unwrap_or(&ex.prompt_ids);
    let prompt = tok.decode(bare, false)?;
    let eos = tok.eos_token_id;
    let body = match ex.completion_ids.split_last() {
        Some((last, body)) if Some(*last) == eos => body,
        _ => &ex.completion_ids[..],
    };
    let completion = tok.decode(body, false)?;
    let mut again = tok.encode(&completion, false)?;
    again.extend(eos);
    let round_trips = tok.encode(&prompt, true)? == ex.prompt_ids && again == ex.completion_ids;
    let user = frame.as_ref().and_then(|(a, b)| {
        let inner = prompt.strip_prefix(a.as_str())?.strip_suffix(b.as_str())?;
        let again = tok.apply_chat_template(&[ChatMessage::new("user", inner)], true, &Default::default()).ok()?;
        (again == prompt).then(|| inner.to_string())
    });
    Ok(ExampleText { prompt, user, completion, round_trips })
}

fn jsonl(path: &Path, rows: impl Iterator<Item = Value>) -> Result<()> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, &r).expect("JSON values serialize");
        buf.push(b'\n');
    }
    Ok(gramrr_model::fsutil::write_atomic(path, &buf)?)
}

/// The hyperparameters in TRL/transformers `SFTConfig` names, plus gramrr's own.
fn train_config(job: &StageJob, examples: usize, steps: usize) -> Value {
    let tc = job.tc;
    let sft = job.sft;
    let lora = tc.lora.as_ref().map(|l| {
        json!({
            "r": l.rank, "lora_alpha": l.alpha, "lora_dropout": l.dropout,
            "target_modules": l.targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
        })
    });
    json!({
        "stage": job.stage,
        "model_name_or_path": job.init,
        "examples": examples,
        "max_steps": steps,
        "num_train_epochs": tc.epochs,
        "learning_rate": sft.lr,
        "lr_scheduler_type": tc.scheduler,
        "warmup_ratio": sft.warmup_ratio,
        "warmup_steps": gramrr_train::optim::warmup_steps(sft.warmup_ratio, steps),
        "per_device_train_batch_size": sft.batch_size,
        "gradient_accumulation_steps": sft.grad_accum,
        "weight_decay": sft.adam.weight_decay,
        "adam_beta1": sft.adam.beta1,
        "adam_beta2": sft.adam.beta2,
        "adam_epsilon": sft.adam.eps,
        "max_grad_norm": sft.max_grad_norm,
        "max_length": sft.max_len,
        "seed": sft.seed,
        "lora": lora,
        "decision_weight": tc.decision_weight,
        "packing": tc.pack,
        "padding_free": tc.padding_free,
        "shuffle": false,
        "note": "gramrr's own trainer: weight decay on tensors of 2+ dimensions only; batches follow schedule.json (already shuffled); \
                 loss = sum(weight * token NLL) / sum(weight) over the whole optimizer step (all micro-batches); LoRA freezes \
                 everything else, full fine-tuning trains every tensor; f32",
    })
}

/// LLaMA-Factory's arguments for the same stage (`llamafactory-cli train llamafactory/train.json`).
fn llamafactory_config(job: &StageJob, data_dir: &Path, out: &Path, steps: usize) -> Value {
    let sft = job.sft;
    let mut v = json!({
        "model_name_or_path": job.init,
        "stage": "sft",
        "do_train": true,
        "finetuning_type": if job.tc.lora.is_some() { "lora" } else { "full" },
        "dataset": "gramrr_alpaca",
        "dataset_dir": data_dir.join("llamafactory"),
        "template": "empty",
        "cutoff_len": sft.max_len,
        "output_dir": out,
        "overwrite_output_dir": true,
        "per_device_train_batch_size": sft.batch_size,
        "gradient_accumulation_steps": sft.grad_accum,
        "learning_rate": sft.lr,
        "num_train_epochs": job.tc.epochs,
        "max_steps": steps,
        "lr_scheduler_type": job.tc.scheduler,
        "warmup_ratio": sft.warmup_ratio,
        "weight_decay": sft.adam.weight_decay,
        "adam_beta1": sft.adam.beta1,
        "adam_beta2": sft.adam.beta2,
        "max_grad_norm": sft.max_grad_norm,
        "seed": sft.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
    });
    if let (Some(l), Some(o)) = (&job.tc.lora, v.as_object_mut()) {
        o.insert("lora_rank".into(), json!(l.rank));
        o.insert("lora_alpha".into(), json!(l.alpha));
        o.insert("lora_dropout".into(), json!(l.dropout));
        o.insert("lora_target".into(), json!(l.targets.iter().map(|t| t.module()).collect::<Vec<_>>().join(",")));
    }
    v
}

/// Writes the stage's data and hyperparameters into `dir` (see the module docs); `out` is the
/// output directory named in LLaMA-Factory's arguments.
pub fn export(job: &StageJob, dir: &Path, out: &Path) -> Result<ExportSummary> {
    let lf = dir.join("llamafactory");
    std::fs::create_dir_all(&lf).map_err(|e| PipelineError::io(&lf, e))?;
    let (examples, stats) = kept_examples(job);
    if examples.is_empty() {
        return Err(PipelineError::stage(job.stage, format!("no example fits max_len = {}", job.sft.max_len)));
    }
    let steps = schedule(&examples, job.sft);
    let added = job.tok.encode("", true)?;
    let frame = chat_frame(job.tok);
    let texts: Vec<ExampleText> = examples.iter().map(|e| example_text(job.tok, e, &added, &frame)).collect::<Result<_>>()?;

    jsonl(
        &dir.join("tokens.jsonl"),
        examples.iter().map(|e| {
            let mask: Vec<u8> = std::iter::repeat_n(0, e.prompt_ids.len()).chain(std::iter::repeat_n(1, e.completion_ids.len())).collect();
            let weights: Vec<f32> = (0..e.len()).map(|t| e.weight_at(t)).collect();
            json!({"input_ids": e.ids().collect::<Vec<u32>>(), "completion_mask": mask, "weights": weights})
        }),
    )?;
    gramrr_model::fsutil::write_json_atomic(
        &dir.join("schedule.json"),
        &json!({"note": "steps[s] = the micro-batches (indices into tokens.jsonl) of optimizer step s", "steps": steps}),
    )?;
    jsonl(&dir.join("prompt_completion.jsonl"), texts.iter().map(|t| json!({"prompt": t.prompt, "completion": t.completion})))?;
    let user = |t: &ExampleText| t.user.clone().unwrap_or_else(|| t.prompt.clone());
    jsonl(
        &dir.join("messages.jsonl"),
        texts.iter().map(|t| json!({"messages": [{"role": "user", "content": user(t)}, {"role": "assistant", "content": t.completion}]})),
    )?;
    jsonl(&lf.join("alpaca.jsonl"), texts.iter().map(|t| json!({"instruction": t.prompt, "input": "", "output": t.completion})))?;
    jsonl(
        &lf.join("sharegpt.jsonl"),
        texts.iter().map(|t| json!({"conversations": [{"from": "human", "value": user(t)}, {"from": "gpt", "value": t.completion}]})),
    )?;
    gramrr_model::fsutil::write_json_atomic(
        &lf.join("dataset_info.json"),
        &json!({
            "gramrr_alpaca": {"file_name": "alpaca.jsonl", "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
            "gramrr_sharegpt": {"file_name": "sharegpt.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        }),
    )?;
    gramrr_model::fsutil::write_json_atomic(&lf.join("train.json"), &llamafactory_config(job, dir, out, steps.len()))?;
    gramrr_model::fsutil::write_json_atomic(&dir.join("train_config.json"), &train_config(job, examples.len(), steps.len()))?;

    let summary = ExportSummary {
        stage: job.stage.to_string(),
        dir: dir.to_path_buf(),
        base_model: job.init.to_path_buf(),
        examples: examples.len(),
        skipped: stats.skipped,
        total_steps: steps.len(),
        tokens: examples.iter().map(|e| e.len()).sum(),
        text_round_trip: texts.iter().filter(|t| t.round_trips).count(),
        chat_prompts: texts.iter().filter(|t| t.user.is_some()).count(),
        weighted_examples: examples.iter().filter(|e| e.completion_weights.iter().any(|w| *w != 1.0)).count(),
    };
    gramrr_model::fsutil::write_atomic(&dir.join("README.md"), readme(&summary).as_bytes())?;
    Ok(summary)
}

fn readme(s: &ExportSummary) -> String {
    format!(
        r#"# Training data of stage `{stage}` (written by gramrr)

{n} examples ({skipped} longer than max_length left out), {steps} optimizer steps, {tokens} tokens.
Base model: `{base}`.

| file | fields | carries the loss weights? |
|---|---|---|
| `tokens.jsonl` | `input_ids` (prompt then completion), `completion_mask` (1 on completion tokens), `weights` (per token, 0 on the prompt) | yes, exactly |
| `schedule.json` | `steps[s]`: the micro-batches (lists of line indices of `tokens.jsonl`) of optimizer step `s`, in gramrr's shuffled order | - |
| `prompt_completion.jsonl` | `prompt`, `completion` (TRL prompt-completion; the reader adds BOS/EOS itself) | no |
| `messages.jsonl` | `messages`: one `user` turn and one `assistant` turn (TRL conversational) | no |
| `llamafactory/dataset_info.json` | datasets `gramrr_alpaca` (`alpaca.jsonl`: `instruction`, `input`, `output`) and `gramrr_sharegpt` (`sharegpt.jsonl`: `conversations` of `from`/`value`) | no |
| `llamafactory/train.json` | LLaMA-Factory's arguments for this stage (`llamafactory-cli train llamafactory/train.json`) | no |
| `train_config.json` | learning_rate, max_steps, num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps, warmup_ratio/warmup_steps, lr_scheduler_type, max_length, weight_decay, adam_beta1/2, adam_epsilon, max_grad_norm, seed, lora (r, lora_alpha, lora_dropout, target_modules), decision_weight, packing, padding_free | - |

What the text formats lose: {weighted} of {n} examples give some completion tokens a loss
weight other than 1 (`decision_weight` on the label and verdict tokens, the weighted segments of
the format). TRL's and LLaMA-Factory's stock formats have no field for it, so a stock trainer
trains them with weight 1 (the paper's plain cross entropy). Stock trainers also normalise the
loss per micro-batch or per token count of their own, shuffle in their own order, and may
decay every parameter; `tools/trl_sft.py` reads `tokens.jsonl` and `schedule.json` and follows
gramrr's trainer in all of these.

Text fidelity: {rt} of {n} examples re-encode from their text to exactly the same token ids;
{chat} of {n} prompts are the tokenizer's chat template around one user turn (in
`messages.jsonl` and `sharegpt.jsonl` the others are a user turn of raw prompt text, which a
conversational trainer wraps in the chat template although gramrr did not).

Bring the result back: leave an HF checkpoint (config.json + safetensors, same architecture and
vocabulary) or a PEFT LoRA adapter in a directory DIR, then
`gramrr pipeline run CONFIG --resume --stage-model {stage}=DIR`.
"#,
        stage = s.stage,
        n = s.examples,
        skipped = s.skipped,
        steps = s.total_steps,
        tokens = s.tokens,
        base = s.base_model.display(),
        weighted = s.weighted_examples,
        rt = s.text_round_trip,
        chat = s.chat_prompts,
    )
}

/// Runs the stage's command on its exported data, then imports what it left in `{out}` into
/// `stage_dir/model`. `cwd` is where the command runs (the config file's directory).
pub fn run_command(job: &StageJob, command: &str, stage_dir: &Path, cwd: &Path) -> Result<TrainReport> {
    let t0 = Instant::now();
    let train = stage_dir.join("train");
    let (data, out, work) = (train.join("data"), train.join("out"), train.join("work"));
    // A previous failed run must not leave files that pass for this run's output.
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| PipelineError::io(&out, e))?;
    }
    for d in [&out, &work] {
        std::fs::create_dir_all(d).map_err(|e| PipelineError::io(d, e))?;
    }
    let summary = export(job, &data, &out)?;
    let value = |name: &str| -> Option<String> {
        Some(match name {
            "model" => job.init.display().to_string(),
            "data" => data.display().to_string(),
            "tokens" => data.join("tokens.jsonl").display().to_string(),
            "config" => data.join("train_config.json").display().to_string(),
            "llamafactory" => data.join("llamafactory").join("train.json").display().to_string(),
            "out" => out.display().to_string(),
            "work" => work.display().to_string(),
            "stage" => job.stage.to_string(),
            "lora_rank" => job.tc.lora.as_ref().map_or(0, |l| l.rank).to_string(),
            "steps" => summary.total_steps.to_string(),
            "seed" => job.sft.seed.to_string(),
            "lr" => job.sft.lr.to_string(),
            _ => return None,
        })
    };
    let line = expand(command, &value).map_err(|m| PipelineError::stage(job.stage, format!("command: {m}")))?;
    crate::progress::note(format!("{}: running {line}", job.stage));
    let log = train.join("command.log");
    let tail = run_streamed(job.stage, &line, cwd, &log)?;
    if let Err(why) = tail.status {
        return Err(PipelineError::stage(
            job.stage,
            format!("the training command {why} (full log: {}); its last lines:\n{}", log.display(), tail.lines.join("\n")),
        ));
    }
    import_model(job.stage, job.init, &out, &stage_dir.join("model")).map_err(|e| match e {
        PipelineError::Stage { stage, message } => PipelineError::Stage {
            stage,
            message: format!("{message}\n(the command exited 0; its last lines:\n{})", tail.lines.join("\n")),
        },
        other => other,
    })?;
    let losses = read_losses(&out);
    let seconds = t0.elapsed().as_secs_f64();
    Ok(TrainReport {
        mode: if job.tc.lora.is_some() { "lora" } else { "full" }.into(),
        steps: summary.total_steps,
        resumed_from: None,
        final_loss: losses.last().copied(),
        losses,
        data: DataStats { records: job.examples.len(), kept: summary.examples, skipped: summary.skipped, ..Default::default() },
        trainable_params: 0,
        tokens: summary.tokens,
        seconds,
        tokens_per_sec: summary.tokens as f64 / seconds.max(1e-9),
        out_dir: Some(out),
    })
}

/// Per-step losses the command reported: `gramrr_losses.json` (written by tools/trl_sft.py) or
/// the `loss` entries of transformers' `trainer_state.json`.
fn read_losses(out: &Path) -> Vec<f32> {
    let read = |p: PathBuf| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok() };
    if let Some(v) = read(out.join("gramrr_losses.json")) {
        if let Some(a) = v.get("losses").and_then(|l| l.as_array()) {
            return a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
        }
    }
    if let Some(v) = read(out.join("trainer_state.json")) {
        if let Some(a) = v.get("log_history").and_then(|l| l.as_array()) {
            return a.iter().filter_map(|e| e.get("loss").and_then(|x| x.as_f64())).map(|x| x as f32).collect();
        }
    }
    Vec::new()
}

struct CommandOutcome {
    /// Ok, or what went wrong ("exited with status 3", "was killed by a signal").
    status: std::result::Result<(), String>,
    /// The last [`TAIL_LINES`] lines of stdout and stderr, interleaved as they came.
    lines: Vec<String>,
}

/// Runs `line` with `sh -c` in `cwd`; every output line (stdout and stderr) goes to our stderr
/// prefixed with the stage name, and to `log`.
fn run_streamed(stage: &str, line: &str, cwd: &Path, log: &Path) -> Result<CommandOutcome> {
    // stderr joins stdout in one pipe, so the lines keep the order the command wrote them in
    // (a traceback last), as a terminal shows them.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 2>&1\n{line}"))
        .current_dir(cwd)
        .env("GRAMRR_STAGE", stage)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::stage(stage, format!("cannot start `sh -c {line}`: {e}")))?;
    let file = std::fs::File::create(log).map_err(|e| PipelineError::io(log, e))?;
    let shared = Arc::new(Mutex::new((VecDeque::<String>::with_capacity(TAIL_LINES), file)));
    let pump = |r: Box<dyn Read + Send>| {
        let shared = shared.clone();
        let stage = stage.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                // Progress bars redraw with '\r': keep what the terminal would show last.
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                let shown = text.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or("").to_string();
                buf.clear();
                eprintln!("[{stage}] {shown}");
                let mut g = shared.lock().expect("log lock");
                let _ = writeln!(g.1, "{shown}");
                if g.0.len() == TAIL_LINES {
                    g.0.pop_front();
                }
                g.0.push_back(shown);
            }
        })
    };
    let a = pump(Box::new(child.stdout.take().expect("piped")));
    let b = pump(Box::new(child.stderr.take().expect("piped")));
    let status = child.wait().map_err(|e| PipelineError::stage(stage, format!("waiting for the command: {e}")))?;
    let _ = (a.join(), b.join());
    let lines = shared.lock().expect("log lock").0.iter().cloned().collect();
    let status = if status.success() {
        Ok(())
    } else {
        Err(match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".into(),
        })
    };
    Ok(CommandOutcome { status, lines })
}

/// The fields that must agree between the stage's base and what a trainer brought back.
fn shape_fields(c: &DecoderConfig) -> Vec<(&'static str, String)> {
    vec![
        ("architecture", format!("{:?}", c.architecture)),
        ("vocab_size", c.vocab_size.to_string()),
        ("hidden_size", c.hidden_size.to_string()),
        ("intermediate_size", c.intermediate_size.to_string()),
        ("num_hidden_layers", c.num_hidden_layers.to_string()),
        ("num_attention_heads", c.num_attention_heads.to_string()),
        ("num_key_value_heads", c.num_key_value_heads.to_string()),
        ("head_dim", c.head_dim.to_string()),
        ("tie_word_embeddings", c.tie_word_embeddings.to_string()),
        ("qk_norm", c.qk_norm.to_string()),
        ("qkv_bias", c.qkv_bias.to_string()),
    ]
}

/// Checks what a trainer left in `from` against the stage's starting model `init` and writes the
/// stage's model to `to` (f32 safetensors, with `init`'s config and tokenizer files): an HF
/// checkpoint of the same architecture, shapes and vocabulary, or a PEFT LoRA adapter merged
/// into `init`. Refusals name the directory and what differs.
pub fn import_model(stage: &str, init: &Path, from: &Path, to: &Path) -> Result<()> {
    let refuse = |m: String| PipelineError::stage(stage, format!("{}: {m}", from.display()));
    let device = candle_core::Device::Cpu;
    let base_cfg = DecoderConfig::from_file(&init.join("config.json"))?;
    let decoder = if from.join("adapter_config.json").exists() {
        let ck = SafetensorsCheckpoint::open(init, &device, WeightDType::F32)?;
        let mut decoder = Decoder::load(&base_cfg, &ck)?;
        gramrr_train::load_adapter(&mut decoder, from).map_err(|e| refuse(format!("not a LoRA adapter gramrr can merge into {}: {e}", init.display())))?;
        gramrr_train::merge_lora(&mut decoder)?;
        decoder
    } else {
        if !from.join("config.json").exists() {
            let listing = list_dir(from);
            return Err(refuse(format!(
                "no usable model: expected an HF checkpoint (config.json + *.safetensors) or a PEFT adapter (adapter_config.json); found {listing}"
            )));
        }
        let has_weights = std::fs::read_dir(from)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".safetensors")))
            .unwrap_or(false);
        if !has_weights {
            return Err(refuse("config.json but no *.safetensors weights (save with safe_serialization)".into()));
        }
        let cfg = DecoderConfig::from_file(&from.join("config.json")).map_err(|e| refuse(format!("not a checkpoint gramrr reads: {e}")))?;
        let diffs: Vec<String> = shape_fields(&base_cfg)
            .into_iter()
            .zip(shape_fields(&cfg))
            .filter(|(a, b)| a.1 != b.1)
            .map(|((k, a), (_, b))| format!("{k} {b} (the stage's base {} has {a})", init.display()))
            .collect();
        if !diffs.is_empty() {
            return Err(refuse(format!("a checkpoint of another model: {}", diffs.join(", "))));
        }
        if from.join("tokenizer.json").exists() {
            let theirs = TextTokenizer::from_dir(from).map_err(|e| refuse(format!("its tokenizer: {e}")))?;
            let ours = TextTokenizer::from_dir(init)?;
            if theirs.inner().get_vocab(true) != ours.inner().get_vocab(true) {
                return Err(refuse(format!(
                    "its tokenizer has another vocabulary ({} tokens) than the stage's base {} ({} tokens)",
                    theirs.vocab_size(),
                    init.display(),
                    ours.vocab_size()
                )));
            }
        }
        let ck = SafetensorsCheckpoint::open(from, &device, WeightDType::F32)?;
        Decoder::load(&base_cfg, &ck).map_err(|e| refuse(format!("its weights do not load as the base's architecture: {e}")))?
    };
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| PipelineError::io(to, e))?;
    }
    gramrr_train::checkpoint::save_hf_checkpoint(&decoder, to, Some(init), None)?;
    Ok(())
}

fn list_dir(dir: &Path) -> String {
    match std::fs::read_dir(dir) {
        Err(_) => "no such directory".into(),
        Ok(d) => {
            let mut names: Vec<String> = d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            if names.is_empty() {
                "an empty directory".into()
            } else {
                names.join(", ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_quoted_and_unknown_ones_are_named() {
        let v = |n: &str| Some(match n {
            "model" => "/m/base model".to_string(),
            "out" => "/o".to_string(),
            _ => "x".to_string(),
        });
        assert_eq!(expand("t --model {model} --out {out} -c '{{}}'", &v).unwrap(), "t --model '/m/base model' --out /o -c '{}'");
        let e = expand("t {modle}", &v).unwrap_err();
        assert!(e.contains("{modle}") && e.contains("{model}"), "{e}");
        assert!(check_placeholders("t {out").is_err());
        assert!(check_placeholders("t }").is_err());
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}

/// The training stages a model can be brought back for (`--stage-model`), as `Pipeline::train`
/// names them: `prover`, `rm`, `iterI/rm`, `final`, `baseline`, `control/roundJ`, `adapt/train`.
pub fn is_training_stage(name: &str) -> bool {
    let numbered = |prefix: &str, suffix: &str| {
        name.strip_prefix(prefix).and_then(|s| s.strip_suffix(suffix)).is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= 1))
    };
    ["prover", "rm", "final", "baseline", "adapt/train"].contains(&name) || numbered("iter", "/rm") || numbered("control/round", "")
}

impl crate::pipeline::Pipeline {
    /// Trains stage `name` without the built-in trainer when asked to: a model brought back with
    /// `--stage-model`, an export for `gramrr export-sft` (which stops the stage with
    /// [`PipelineError::Exported`]), or `backend = "command"`. `None`: train in process.
    pub(crate) fn train_elsewhere(
        &self,
        name: &str,
        init: &Path,
        stage_dir: &Path,
        examples: &[SftExample],
        tc: &TrainConfig,
        sft: &SftConfig,
    ) -> Result<Option<TrainReport>> {
        let exporting = self.export_stage.as_ref().is_some_and(|(s, _)| s == name);
        let command = tc.backend == crate::config::TrainBackend::Command && tc.command.is_some();
        if !exporting && !command && !self.stage_models.contains_key(name) {
            return Ok(None);
        }
        let tok = TextTokenizer::from_dir(init)?;
        let job = StageJob { stage: name, init, tok: &tok, examples, tc, sft };
        if let Some((stage, dir)) = &self.export_stage {
            if stage == name {
                let summary = export(&job, dir, &dir.join("out"))?;
                return Err(PipelineError::Exported(Box::new(summary)));
            }
        }
        if let Some(from) = self.stage_models.get(name) {
            crate::progress::note(format!("{name}: importing the model trained elsewhere from {}", from.display()));
            let t0 = Instant::now();
            import_model(name, init, from, &stage_dir.join("model"))?;
            let (kept, stats) = kept_examples(&job);
            let steps = schedule(&kept, sft).len();
            return Ok(Some(TrainReport {
                mode: if tc.lora.is_some() { "lora" } else { "full" }.into(),
                steps,
                resumed_from: None,
                losses: read_losses(from),
                final_loss: read_losses(from).last().copied(),
                data: stats,
                trainable_params: 0,
                tokens: kept.iter().map(|e| e.len()).sum(),
                seconds: t0.elapsed().as_secs_f64(),
                tokens_per_sec: 0.0,
                out_dir: Some(from.clone()),
            }));
        }
        let (crate::config::TrainBackend::Command, Some(command)) = (tc.backend, &tc.command) else {
            return Ok(None);
        };
        let cwd = self.origin.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let report = run_command(&job, command, stage_dir, cwd)?;
        // As the built-in trainer leaves it (the control stage looks for it to skip done rounds).
        let path = stage_dir.join("train").join("train_report.json");
        gramrr_model::fsutil::write_json_atomic(&path, &serde_json::to_value(&report).expect("the report serializes"))?;
        Ok(Some(report))
    }
}

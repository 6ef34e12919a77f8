//! A `gramrr serve` of a tiny fixture model on a loopback port, in-process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::{JudgeConfig, PairwiseJudge};
use gramrr_model::{Backend, Engine, LoadOptions};
use gramrr_serve::openai::CompletionModel;
use gramrr_serve::{start_with, ServeConfig, ServerHandle};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gramrr-model/tests/fixtures/models").join(name)
}

pub fn engine(name: &str) -> Arc<Engine> {
    Arc::new(Engine::load(&fixture(name).to_string_lossy(), &LoadOptions::default()).unwrap())
}

/// A server of `engine` and the runtime that drives it (keep both alive).
pub struct Served {
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.shutdown());
        }
    }
}

pub fn serve(engine: Arc<Engine>, name: &str, api_key: Option<&str>) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let backend: Arc<dyn Backend> = engine.clone();
    let judge = PairwiseJudge::new(backend, JudgeTemplate::compact(), JudgeConfig::default());
    let config = ServeConfig { host: "127.0.0.1".into(), port: 0, api_key: api_key.map(str::to_string), ..ServeConfig::default() };
    let handle = rt
        .block_on(start_with(config, judge, Some(CompletionModel { engine, name: name.to_string() })))
        .unwrap();
    let url = format!("http://{}/v1", handle.addr());
    Served { rt, handle: Some(handle), url }
}

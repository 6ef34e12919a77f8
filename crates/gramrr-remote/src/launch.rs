//! Inference servers that gramrr starts itself: `replicas` copies of a command template with
//! `{model}` and `{port}` filled in, each in its own process group, waited on until
//! `/v1/models` answers, and stopped (SIGTERM to the group, then SIGKILL) when the
//! [`LaunchedServers`] value is dropped: after the stage, on error, or on panic. On Linux each
//! server also gets SIGTERM if gramrr itself dies (Ctrl-C, kill), through `PR_SET_PDEATHSIG`.
//! That signal fires when the *thread* that started the server ends, so start them from a
//! thread that outlives them (the pipeline starts them on its main thread).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RemoteError;

pub struct LaunchedServers {
    children: Vec<Child>,
    /// Base URLs, `http://127.0.0.1:PORT/v1`.
    pub urls: Vec<String>,
    pub logs: Vec<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Fills a launch template: `{model}` and `{port}` (`{{`/`}}` are not needed: nothing else is
/// replaced).
pub fn fill(template: &str, model: &Path, port: u16) -> String {
    template.replace("{model}", &model.display().to_string()).replace("{port}", &port.to_string())
}

impl LaunchedServers {
    /// Starts `replicas` servers of `model` and waits up to `startup` for each to list a model
    /// at `/v1/models`. Each one's output goes to `log_dir/server-{i}.log`.
    pub fn start(template: &str, model: &Path, replicas: usize, log_dir: &Path, startup: Duration) -> Result<Self, RemoteError> {
        if !template.contains("{port}") {
            return Err(RemoteError::Config(format!("engine.launch {template:?} has no {{port}}: gramrr picks each replica's port")));
        }
        std::fs::create_dir_all(log_dir).map_err(|e| RemoteError::Config(format!("{}: {e}", log_dir.display())))?;
        let mut me = LaunchedServers { children: vec![], urls: vec![], logs: vec![] };
        for i in 0..replicas.max(1) {
            let port = free_port().map_err(|e| RemoteError::Config(format!("finding a free port: {e}")))?;
            let cmd = fill(template, model, port);
            let log = log_dir.join(format!("server-{i}.log"));
            let out = File::create(&log).map_err(|e| RemoteError::Config(format!("{}: {e}", log.display())))?;
            let err = out.try_clone().map_err(|e| RemoteError::Config(format!("{}: {e}", log.display())))?;
            let mut c = Command::new("sh");
            // `exec` makes the server the shell's process itself, so the signals reach it.
            c.arg("-c").arg(format!("exec {cmd}")).stdin(Stdio::null()).stdout(out).stderr(err);
            #[cfg(unix)]
            {
                use std::os::unix::process::CommandExt;
                c.process_group(0);
                #[cfg(target_os = "linux")]
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    c.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
            }
            let child = c.spawn().map_err(|e| RemoteError::Config(format!("starting `{cmd}`: {e}")))?;
            me.children.push(child);
            me.urls.push(format!("http://127.0.0.1:{port}/v1"));
            me.logs.push(log);
        }
        let deadline = Instant::now() + startup;
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).http_status_as_error(false).build().into();
        for i in 0..me.children.len() {
            loop {
                if let Ok(Some(status)) = me.children[i].try_wait() {
                    return Err(RemoteError::Config(format!(
                        "launched server {i} exited ({status}) before answering; its log {}:\n{}",
                        me.logs[i].display(),
                        tail(&me.logs[i])
                    )));
                }
                let ok = agent.get(&format!("{}/models", me.urls[i])).call().map(|r| r.status().as_u16() == 200).unwrap_or(false);
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(RemoteError::Config(format!(
                        "launched server {i} did not answer {}/models within {startup:?}; its log {}:\n{}",
                        me.urls[i],
                        me.logs[i].display(),
                        tail(&me.logs[i])
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(me)
    }

    /// Process ids of the servers (their process groups have the same ids).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for LaunchedServers {
    fn drop(&mut self) {
        #[cfg(unix)]
        for c in &self.children {
            // SAFETY: kill(2) on the process group this value created.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        #[cfg(unix)]
                        // SAFETY: as above; the group did not stop on SIGTERM.
                        unsafe {
                            libc::kill(-(c.id() as i32), libc::SIGKILL);
                        }
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

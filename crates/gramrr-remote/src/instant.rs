//! A trivial OpenAI-compatible server that answers at once (std threads on loopback), for
//! measuring the client's own cost per request (`gramrr bench remote`): every token gets
//! log-prob -1, every generation is one token `"x"`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use serde_json::{json, Value};

/// Starts one instant server on a free loopback port; returns its base URL (`…/v1`). It runs
/// until the process ends.
pub fn spawn() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = connection(stream);
            });
        }
    });
    Ok(url)
}

fn connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let answer = if path.ends_with("/models") {
            json!({"object": "list", "data": [{"id": "instant", "object": "model"}]})
        } else {
            let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n_prompt = b["prompt"].as_array().map(|a| a.len()).unwrap_or(1);
            let n = b.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
            let echo = b.get("echo").and_then(Value::as_bool).unwrap_or(false);
            let shown = if echo { n_prompt + 1 } else { 1 };
            let lp: Vec<Value> = (0..shown).map(|i| if echo && i == 0 { Value::Null } else { json!(-1.0) }).collect();
            let top: Vec<Value> = (0..shown).map(|_| json!({"token_id:1": -1.0})).collect();
            let logprobs = b.get("logprobs").filter(|v| !v.is_null()).map(|_| json!({"tokens": vec!["x"; shown], "token_logprobs": lp, "top_logprobs": top}));
            let choices: Vec<Value> =
                (0..n).map(|i| json!({"index": i, "text": "x", "finish_reason": "length", "logprobs": logprobs.clone().unwrap_or(Value::Null)})).collect();
            json!({"choices": choices, "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}})
        };
        let text = answer.to_string();
        write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len())?;
    }
}

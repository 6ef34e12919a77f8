//! Prometheus text-format metrics, kept by hand: a handful of counters and histograms do not
//! need a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        let n = bounds.len();
        Histogram { bounds, counts: vec![0; n], sum: 0.0, count: 0 }
    }
    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_items: Histogram,
    batch_jobs: Histogram,
    batch_seconds: Histogram,
    items: u64,
    cancelled: u64,
    rejected_full: u64,
}

/// Server metrics. The queue depth is an atomic because the HTTP side and the worker both
/// touch it on every request.
#[derive(Debug)]
pub struct Metrics {
    pub queue_depth: AtomicUsize,
    pub queue_capacity: usize,
    inner: Mutex<Inner>,
}

fn latency_buckets() -> Vec<f64> {
    vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
}
fn size_buckets() -> Vec<f64> {
    (0..11).map(|i| (1u64 << i) as f64).collect()
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Self {
        Metrics {
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_items: Histogram::new(size_buckets()),
                batch_jobs: Histogram::new(size_buckets()),
                batch_seconds: Histogram::new(latency_buckets()),
                items: 0,
                cancelled: 0,
                rejected_full: 0,
            }),
        }
    }
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap();
        *m.requests.entry((endpoint.to_string(), status)).or_default() += 1;
        m.latency.entry(endpoint.to_string()).or_insert_with(|| Histogram::new(latency_buckets())).observe(seconds);
    }
    pub fn batch(&self, jobs: usize, items: usize, seconds: f64) {
        let mut m = self.inner.lock().unwrap();
        m.batch_jobs.observe(jobs as f64);
        m.batch_items.observe(items as f64);
        m.batch_seconds.observe(seconds);
        m.items += items as u64;
    }
    pub fn cancelled(&self, n: usize) {
        self.inner.lock().unwrap().cancelled += n as u64;
    }
    pub fn rejected_full(&self) {
        self.inner.lock().unwrap().rejected_full += 1;
    }
    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.inner.lock().unwrap().batch_jobs.count
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP gramrr_queue_depth Requests waiting for the engine.\n# TYPE gramrr_queue_depth gauge");
        let _ = writeln!(out, "gramrr_queue_depth {}", self.queue_depth.load(Ordering::SeqCst));
        let _ = writeln!(out, "# HELP gramrr_queue_capacity Requests the queue holds before answering 503.\n# TYPE gramrr_queue_capacity gauge");
        let _ = writeln!(out, "gramrr_queue_capacity {}", self.queue_capacity);
        let _ = writeln!(out, "# HELP gramrr_requests_total HTTP requests by endpoint and status.\n# TYPE gramrr_requests_total counter");
        for ((endpoint, status), n) in &m.requests {
            let _ = writeln!(out, "gramrr_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP gramrr_request_latency_seconds Time from request to response.\n# TYPE gramrr_request_latency_seconds histogram");
        for (endpoint, h) in &m.latency {
            h.write(&mut out, "gramrr_request_latency_seconds", &format!("endpoint=\"{endpoint}\""));
        }
        let _ = writeln!(out, "# HELP gramrr_batch_items Items (pairs, list candidates, queries) per engine batch.\n# TYPE gramrr_batch_items histogram");
        m.batch_items.write(&mut out, "gramrr_batch_items", "");
        let _ = writeln!(out, "# HELP gramrr_batch_requests Requests combined into one engine batch.\n# TYPE gramrr_batch_requests histogram");
        m.batch_jobs.write(&mut out, "gramrr_batch_requests", "");
        let _ = writeln!(out, "# HELP gramrr_batch_seconds Engine time per batch.\n# TYPE gramrr_batch_seconds histogram");
        m.batch_seconds.write(&mut out, "gramrr_batch_seconds", "");
        let _ = writeln!(out, "# HELP gramrr_items_total Items judged.\n# TYPE gramrr_items_total counter\ngramrr_items_total {}", m.items);
        let _ = writeln!(out, "# HELP gramrr_cancelled_total Queued requests dropped because their client went away.\n# TYPE gramrr_cancelled_total counter\ngramrr_cancelled_total {}", m.cancelled);
        let _ = writeln!(out, "# HELP gramrr_rejected_queue_full_total Requests answered 503 because the queue was full.\n# TYPE gramrr_rejected_queue_full_total counter\ngramrr_rejected_queue_full_total {}", m.rejected_full);
        out
    }
}

//! The built-in canary workload for etcd (the Raft store PD embeds): keys with increasing
//! sequence numbers written through etcd's v3 HTTP gateway before, during and after a fault,
//! each counted only once the cluster acknowledged it, then read back after recovery — the
//! "set" check of Jepsen that TiKV's own tests use.
//!
//! A write has one of three fates: acknowledged (200 with a header), failed before it could
//! reach the cluster (the connection was refused), or indeterminate (sent, no answer: it may
//! or may not have been applied). Only acknowledged writes can be lost; only writes never
//! sent, or refused before sending, can be phantoms.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::journal::WorkloadVerdict;

/// One write may take this long before it counts as indeterminate.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reading back may take this long in all, across endpoints and retries.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lost sequence numbers a verdict lists.
const EXAMPLES: usize = 20;

#[derive(Debug, Default)]
struct Fates {
    attempted: u64,
    acknowledged: BTreeSet<u64>,
    /// Refused before they were sent.
    failed: BTreeSet<u64>,
    indeterminate: BTreeSet<u64>,
    last_error: Option<String>,
}

/// A running canary; [`Canary::finish`] stops it and reads back.
pub struct Canary {
    endpoints: Vec<String>,
    prefix: String,
    http: reqwest::Client,
    fates: Arc<Mutex<Fates>>,
    stop: CancellationToken,
    writer: JoinHandle<()>,
}

fn lock(m: &Mutex<Fates>) -> std::sync::MutexGuard<'_, Fates> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(prefix: &str, seq: u64) -> String {
    // Zero-padded so the keys sort as their numbers.
    format!("{prefix}{seq:012}")
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Canary {
    /// Starts writing `rate` keys a second under `prefix` (which names the run and trial),
    /// rotating to the next endpoint whenever one does not acknowledge.
    pub fn start(endpoints: Vec<String>, rate: u32, prefix: String) -> Canary {
        let http = reqwest::Client::builder()
            .timeout(WRITE_TIMEOUT)
            // Never followed: a redirect would aim the writes beyond the cluster.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        let fates = Arc::new(Mutex::new(Fates::default()));
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_loop(
            http.clone(),
            endpoints.clone(),
            rate.max(1),
            prefix.clone(),
            fates.clone(),
            stop.clone(),
        ));
        Canary {
            endpoints,
            prefix,
            http,
            fates,
            stop,
            writer,
        }
    }

    /// Acknowledged writes so far (for progress lines).
    pub fn acknowledged(&self) -> u64 {
        lock(&self.fates).acknowledged.len() as u64
    }

    /// Stops writing, reads every key back and judges: lost acknowledged writes and
    /// phantoms. The keys are deleted afterwards (best effort), leaving the cluster as found.
    pub async fn finish(self) -> WorkloadVerdict {
        self.stop.cancel();
        let _ = self.writer.await;
        let fates = std::mem::take(&mut *lock(&self.fates));
        let read = read_back(&self.http, &self.endpoints, &self.prefix).await;
        let verdict = judge(&fates, read.as_ref().map(|(keys, _)| keys));
        if let Ok((_, endpoint)) = &read {
            let body = json!({
                "key": B64.encode(self.prefix.as_bytes()),
                "range_end": B64.encode(prefix_end(&self.prefix)),
            });
            let _ = self
                .http
                .post(format!("{endpoint}/v3/kv/deleterange"))
                .json(&body)
                .send()
                .await;
        }
        match read {
            Ok(_) => verdict,
            Err(e) => WorkloadVerdict {
                ok: false,
                detail: Some(format!("could not read the canary keys back: {e}")),
                ..verdict
            },
        }
    }
}

async fn write_loop(
    http: reqwest::Client,
    endpoints: Vec<String>,
    rate: u32,
    prefix: String,
    fates: Arc<Mutex<Fates>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut endpoint = 0usize;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        lock(&fates).attempted = seq;
        let url = format!("{}/v3/kv/put", endpoints[endpoint % endpoints.len()]);
        let body = json!({
            "key": B64.encode(key(&prefix, seq)),
            "value": B64.encode(seq.to_string()),
        });
        // Not raced against `stop`: a write in flight is waited for (at most its timeout),
        // so its fate is known.
        let fate = match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(v) if v.get("header").is_some() && v.get("error").is_none() => Ok(()),
                Ok(v) => Err((true, format!("{url}: {v}"))),
                Err(e) => Err((true, format!("{url}: {e}"))),
            },
            Ok(r) => Err((true, format!("{url}: HTTP {}", r.status()))),
            Err(e) => Err((!e.is_connect(), format!("{url}: {e}"))),
        };
        let mut f = lock(&fates);
        match fate {
            Ok(()) => {
                f.acknowledged.insert(seq);
            }
            Err((sent, why)) => {
                if sent {
                    f.indeterminate.insert(seq);
                } else {
                    f.failed.insert(seq);
                }
                f.last_error = Some(why);
                endpoint += 1;
            }
        }
    }
}

/// Every canary key's sequence number, and the endpoint that answered.
async fn read_back(
    http: &reqwest::Client,
    endpoints: &[String],
    prefix: &str,
) -> Result<(BTreeSet<u64>, String), String> {
    let body = json!({
        "key": B64.encode(prefix.as_bytes()),
        "range_end": B64.encode(prefix_end(prefix)),
        "keys_only": true,
    });
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut last = String::from("no endpoint");
    loop {
        for endpoint in endpoints {
            let url = format!("{endpoint}/v3/kv/range");
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                    Ok(v) => return parse_range(&v, prefix).map(|keys| (keys, endpoint.clone())),
                    Err(e) => last = format!("{url}: {e}"),
                },
                Ok(r) => last = format!("{url}: HTTP {}", r.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn parse_range(v: &Value, prefix: &str) -> Result<BTreeSet<u64>, String> {
    let Some(kvs) = v.get("kvs") else {
        // An empty range has no `kvs` at all.
        return Ok(BTreeSet::new());
    };
    let kvs = kvs.as_array().ok_or("`kvs` is not a list")?;
    let mut keys = BTreeSet::new();
    for kv in kvs {
        let raw = kv["key"].as_str().ok_or("a key is not a string")?;
        let bytes = B64
            .decode(raw)
            .map_err(|e| format!("a key is not base64: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let seq = text
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("a key not of this canary: {text:?}"))?;
        keys.insert(seq);
    }
    Ok(keys)
}

fn judge(fates: &Fates, read: Result<&BTreeSet<u64>, &String>) -> WorkloadVerdict {
    let empty = BTreeSet::new();
    let read = read.unwrap_or(&empty);
    let lost: Vec<u64> = fates.acknowledged.difference(read).copied().collect();
    let phantom = read
        .iter()
        .filter(|s| **s > fates.attempted || fates.failed.contains(s))
        .count() as u64;
    let ok = lost.is_empty() && phantom == 0 && !fates.acknowledged.is_empty();
    let detail = if fates.acknowledged.is_empty() {
        Some(format!(
            "no write was acknowledged (last error: {})",
            fates.last_error.as_deref().unwrap_or("none")
        ))
    } else {
        None
    };
    WorkloadVerdict {
        kind: "etcd-canary".into(),
        attempted: fates.attempted,
        acknowledged: fates.acknowledged.len() as u64,
        lost: lost.len() as u64,
        phantom,
        indeterminate: fates.indeterminate.len() as u64,
        lost_examples: lost.into_iter().take(EXAMPLES).collect(),
        uncounted: false,
        ok,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fates(attempted: u64, acked: &[u64], failed: &[u64], indeterminate: &[u64]) -> Fates {
        Fates {
            attempted,
            acknowledged: acked.iter().copied().collect(),
            failed: failed.iter().copied().collect(),
            indeterminate: indeterminate.iter().copied().collect(),
            last_error: None,
        }
    }

    #[test]
    fn every_acknowledged_write_read_back_passes_and_indeterminate_ones_may_land_or_not() {
        let f = fates(5, &[1, 2, 4], &[], &[3, 5]);
        let read: BTreeSet<u64> = [1, 2, 3, 4].into();
        let v = judge(&f, Ok(&read));
        assert!(v.ok, "{v:?}");
        assert_eq!((v.lost, v.phantom, v.indeterminate), (0, 0, 2));
    }

    #[test]
    fn a_missing_acknowledged_write_is_lost_and_listed() {
        let f = fates(4, &[1, 2, 3, 4], &[], &[]);
        let read: BTreeSet<u64> = [1, 3].into();
        let v = judge(&f, Ok(&read));
        assert!(!v.ok);
        assert_eq!(v.lost, 2);
        assert_eq!(v.lost_examples, vec![2, 4]);
    }

    #[test]
    fn a_refused_or_never_attempted_write_read_back_is_a_phantom() {
        let f = fates(3, &[1], &[2], &[]);
        let read: BTreeSet<u64> = [1, 2, 9].into();
        let v = judge(&f, Ok(&read));
        assert_eq!(v.phantom, 2, "{v:?}");
        assert!(!v.ok);
    }

    #[test]
    fn nothing_acknowledged_is_not_a_pass() {
        let f = fates(3, &[], &[1, 2, 3], &[]);
        let v = judge(&f, Ok(&BTreeSet::new()));
        assert!(!v.ok);
        assert!(v.detail.unwrap().contains("no write was acknowledged"));
    }

    #[test]
    fn keys_sort_as_numbers_and_the_prefix_end_covers_them() {
        assert!(key("c/", 9) < key("c/", 10));
        assert_eq!(prefix_end("c/"), b"c0".to_vec());
        let range = json!({"kvs": [{"key": B64.encode("c/000000000007")}], "count": "1"});
        assert_eq!(parse_range(&range, "c/").unwrap(), BTreeSet::from([7]));
        assert!(
            parse_range(&json!({"count": "0"}), "c/")
                .unwrap()
                .is_empty()
        );
        assert!(parse_range(&json!({"kvs": [{"key": B64.encode("other")}]}), "c/").is_err());
    }
}

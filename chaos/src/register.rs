//! The register workload: clients read, write and compare-and-set a few
//! keys of the replicated state store over HTTP, through any node, and
//! record every operation. Values are unique (no value is ever written
//! twice), so a key's revision changes exactly when its value does, and a
//! compare-and-set on a value is a read of `(value, revision)` followed by a
//! put conditional on that revision: it takes effect at the put, or fails
//! at the read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::history::Operation;
use crate::model::{Keyed, RegisterInput, RegisterOutput};

/// A register operation on one key.
pub type KeyedRegister = Keyed<RegisterInput>;

pub type RegisterHistory = Vec<Operation<KeyedRegister, RegisterOutput>>;

/// How the workload runs.
#[derive(Debug, Clone)]
pub struct RegisterWorkload {
    /// The state namespace it uses (created on first write).
    pub namespace: String,
    pub keys: usize,
    pub clients: usize,
    /// One request's timeout: past it the outcome is unknown.
    pub timeout: Duration,
}

impl Default for RegisterWorkload {
    fn default() -> Self {
        Self {
            namespace: "chaos-register".into(),
            keys: 4,
            clients: 4,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What one request came to.
enum Reply {
    Ok(Value),
    /// A definite refusal the operation had no effect from (404, 409).
    Status(u16),
    /// Timed out, reset, a 5xx: may or may not have happened.
    Unknown,
    /// Nothing listened: it did not happen.
    Refused,
}

struct Client {
    agent: ureq::Agent,
    namespace: String,
}

impl Client {
    fn new(workload: &RegisterWorkload) -> Self {
        Self {
            agent: crate::http_agent(workload.timeout),
            namespace: workload.namespace.clone(),
        }
    }

    fn kv(&self, http: &str, op: &str, body: Value) -> Reply {
        let url = format!("{http}/api/v1/kv/{op}");
        let mut response = match self.agent.post(&url).send_json(&body) {
            Ok(r) => r,
            Err(e) if crate::refused(&e) => return Reply::Refused,
            Err(_) => return Reply::Unknown,
        };
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        match status {
            200 => Reply::Ok(value),
            // 404: absent key (a definite read); 409: a failed check (the
            // put did not happen). Other 4xx are the workload's bug.
            404 | 409 => Reply::Status(status),
            _ => Reply::Unknown,
        }
    }

    /// `Some((value, revision))`, `None` when absent, `Err` when unknown
    /// (`Err(true)`: refused, so it did not happen).
    fn get(&self, http: &str, key: &str) -> Result<Option<(i64, u64)>, bool> {
        match self.kv(
            http,
            "get",
            json!({"namespace": self.namespace, "key": key}),
        ) {
            Reply::Ok(v) => {
                let value = v["value"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or(false)?;
                Ok(Some((value, v["revision"].as_u64().ok_or(false)?)))
            }
            Reply::Status(404) => Ok(None),
            Reply::Refused => Err(true),
            _ => Err(false),
        }
    }
}

/// Runs the workload against `nodes` (HTTP base URLs) until `stop` is set,
/// recording into `history`. Times are nanoseconds since `epoch`.
pub fn run(
    workload: &RegisterWorkload,
    nodes: &[String],
    seed: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<RegisterHistory>>,
    refused: Arc<Mutex<Vec<u64>>>,
) {
    let now = move || epoch.elapsed().as_nanos() as u64;
    std::thread::scope(|scope| {
        for c in 0..workload.clients {
            let stop = stop.clone();
            let history = history.clone();
            let refused_at = refused.clone();
            let nodes = nodes.to_vec();
            scope.spawn(move || {
                let client = Client::new(workload);
                let mut rng = SmallRng::seed_from_u64(seed ^ ((c as u64 + 1) << 32));
                let mut next_value = (c as i64 + 1) * 1_000_000_000;
                let mut last_seen: Vec<Option<i64>> = vec![None; workload.keys];
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.random_range(0..workload.keys);
                    let key = format!("k{k}");
                    let http = &nodes[rng.random_range(0..nodes.len())];
                    let roll = rng.random_range(0..100);
                    let call = now();
                    // Set when the request never reached a node: not recorded.
                    let mut refused = false;
                    let (input, output) = if roll < 50 {
                        let out = client.get(http, &key);
                        match &out {
                            Ok(v) => last_seen[k] = v.map(|(value, _)| value),
                            Err(r) => refused = *r,
                        }
                        (
                            RegisterInput::Read,
                            out.ok()
                                .map(|v| RegisterOutput::Read(v.map(|(value, _)| value))),
                        )
                    } else if roll < 75 || last_seen[k].is_none() {
                        next_value += 1;
                        let body = json!({"namespace": client.namespace, "key": key,
                                          "value": next_value.to_string()});
                        let out = match client.kv(http, "put", body) {
                            Reply::Ok(_) => Some(RegisterOutput::Written),
                            Reply::Refused => {
                                refused = true;
                                None
                            }
                            _ => None,
                        };
                        (RegisterInput::Write(next_value), out)
                    } else {
                        let from = last_seen[k].expect("checked");
                        next_value += 1;
                        let to = next_value;
                        let out = match client.get(http, &key) {
                            Err(r) => {
                                refused = r;
                                None
                            }
                            Ok(Some((value, revision))) if value == from => {
                                let body = json!({"namespace": client.namespace, "key": key,
                                                  "value": to.to_string(), "revision": revision});
                                match client.kv(http, "put", body) {
                                    Reply::Ok(_) => Some(RegisterOutput::Cas(true)),
                                    Reply::Status(409) => Some(RegisterOutput::Cas(false)),
                                    Reply::Refused => {
                                        refused = true;
                                        None
                                    }
                                    _ => None,
                                }
                            }
                            Ok(current) => {
                                last_seen[k] = current.map(|(value, _)| value);
                                Some(RegisterOutput::Cas(false))
                            }
                        };
                        (RegisterInput::Cas { from, to }, out)
                    };
                    if output.is_none() {
                        std::thread::sleep(crate::BACKOFF);
                        if refused {
                            refused_at.lock().expect("refused lock").push(call);
                            continue;
                        }
                    }
                    let op = match output {
                        Some(output) => Operation::completed(
                            c as u64,
                            KeyedRegister { key, input },
                            call,
                            now(),
                            output,
                        ),
                        None => Operation::unknown(c as u64, KeyedRegister { key, input }, call),
                    };
                    history.lock().expect("history lock").push(op);
                }
            });
        }
    });
}

/// Reads every key once (after the faults healed), so a
/// write lost at the end shows as a read that contradicts the history.
pub fn final_reads(
    workload: &RegisterWorkload,
    nodes: &[String],
    epoch: Instant,
    history: &Mutex<RegisterHistory>,
) -> Result<(), String> {
    let client = Client::new(workload);
    // Through the first node that answers: one that stays down after the
    // heal is reported on its own, and must not hide the others' state.
    let mut node = 0;
    for k in 0..workload.keys {
        let key = format!("k{k}");
        // Retried for up to 30 s: a read that never answers hides a loss.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let call = epoch.elapsed().as_nanos() as u64;
            if let Ok(v) = client.get(&nodes[node], &key) {
                let ret = epoch.elapsed().as_nanos() as u64;
                let input = KeyedRegister {
                    key: key.clone(),
                    input: RegisterInput::Read,
                };
                // A client id no workload client has.
                history
                    .lock()
                    .expect("history lock")
                    .push(Operation::completed(
                        u64::MAX,
                        input,
                        call,
                        ret,
                        RegisterOutput::Read(v.map(|(value, _)| value)),
                    ));
                break;
            }
            node = (node + 1) % nodes.len();
            if Instant::now() > deadline {
                return Err(format!(
                    "register key {key} could not be read after the heal"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

//! Readers for the histories the checker is validated on: Jepsen's logs of
//! an etcd register and Porcupine's key-value histories (the conformance
//! data in `shared/conformance/porcupine`). In both, an event's line number
//! is its time.

use crate::history::{History, Operation};
use crate::model::{Keyed, KvInput, RegisterInput, RegisterOutput};
use crate::ChaosError;

/// A Jepsen etcd log: `INFO  jepsen.util - <process> :<type> :<f> <value>`
/// (tab or space separated).
/// `:fail :cas` is a refused compare-and-set (the register held another
/// value); `:info` is an operation that timed out (unknown outcome); a read
/// that failed with `:timed-out` is unknown too.
pub fn jepsen_etcd(text: &str) -> Result<History<RegisterInput, RegisterOutput>, ChaosError> {
    let mut pending: std::collections::HashMap<u64, (RegisterInput, u64)> = Default::default();
    let mut history = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |reason: &str| ChaosError::Parse {
            line: line_no,
            reason: reason.into(),
        };
        let Some(rest) = line.split(" - ").nth(1) else {
            continue;
        };
        // Tabs in most logs, spaces in some: process, type, f, then the
        // value (which may hold a space: `[1 2]`).
        let mut fields = rest.split_whitespace();
        let (Some(process), Some(kind), Some(f)) = (fields.next(), fields.next(), fields.next())
        else {
            continue; // not an operation line
        };
        let Ok(process) = process.parse::<u64>() else {
            continue;
        };
        let value = fields.collect::<Vec<_>>().join(" ");
        let value = value.as_str();
        let time = line_no as u64;
        if kind == ":invoke" {
            let input = match f {
                ":read" => RegisterInput::Read,
                ":write" => RegisterInput::Write(int(value).ok_or_else(|| bad("write value"))?),
                ":cas" => {
                    let (from, to) = pair(value).ok_or_else(|| bad("cas values"))?;
                    RegisterInput::Cas { from, to }
                }
                _ => return Err(bad("unknown operation")),
            };
            if pending.insert(process, (input, time)).is_some() {
                return Err(bad("a process invoked twice without a completion"));
            }
            continue;
        }
        let (input, call) = pending
            .remove(&process)
            .ok_or_else(|| bad("a completion without an invocation"))?;
        let output = match (kind, &input) {
            (":ok", RegisterInput::Read) => Some(RegisterOutput::Read(if value == "nil" {
                None
            } else {
                Some(int(value).ok_or_else(|| bad("read value"))?)
            })),
            (":ok", RegisterInput::Write(_)) => Some(RegisterOutput::Written),
            (":ok", RegisterInput::Cas { .. }) => Some(RegisterOutput::Cas(true)),
            (":fail", RegisterInput::Cas { .. }) => Some(RegisterOutput::Cas(false)),
            (":fail", RegisterInput::Read) | (":info", _) => None,
            _ => return Err(bad("an outcome this operation cannot have")),
        };
        history.push(match output {
            Some(o) => Operation::completed(process, input, call, time, o),
            None => Operation::unknown(process, input, call),
        });
    }
    // Invoked and never completed: unknown.
    for (process, (input, call)) in pending {
        history.push(Operation::unknown(process, input, call));
    }
    Ok(history)
}

fn int(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

fn pair(text: &str) -> Option<(i64, i64)> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut parts = inner.split_whitespace();
    let pair = (int(parts.next()?)?, int(parts.next()?)?);
    parts.next().is_none().then_some(pair)
}

/// Porcupine's key-value histories:
/// `{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}`.
pub fn porcupine_kv(text: &str) -> Result<History<Keyed<KvInput>, String>, ChaosError> {
    let mut pending: std::collections::HashMap<u64, (Keyed<KvInput>, u64)> = Default::default();
    let mut history = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |reason: &str| ChaosError::Parse {
            line: line_no,
            reason: reason.into(),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let process: u64 = edn_field(line, ":process")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(":process"))?;
        let kind = edn_field(line, ":type").ok_or_else(|| bad(":type"))?;
        let f = edn_field(line, ":f").ok_or_else(|| bad(":f"))?;
        let key = edn_string(line, ":key").ok_or_else(|| bad(":key"))?;
        let value = edn_string(line, ":value");
        let time = line_no as u64;
        match kind {
            ":invoke" => {
                let input = match f {
                    ":get" => KvInput::Get,
                    ":put" => KvInput::Put(value.ok_or_else(|| bad("put without a value"))?),
                    ":append" => {
                        KvInput::Append(value.ok_or_else(|| bad("append without a value"))?)
                    }
                    _ => return Err(bad("unknown operation")),
                };
                if pending
                    .insert(process, (Keyed { key, input }, time))
                    .is_some()
                {
                    return Err(bad("a process invoked twice without a completion"));
                }
            }
            ":ok" => {
                let (input, call) = pending
                    .remove(&process)
                    .ok_or_else(|| bad("a completion without an invocation"))?;
                let output = match input.input {
                    KvInput::Get => value.ok_or_else(|| bad("get without a value"))?,
                    _ => String::new(),
                };
                history.push(Operation::completed(process, input, call, time, output));
            }
            _ => return Err(bad("unknown :type")),
        }
    }
    for (process, (input, call)) in pending {
        history.push(Operation::unknown(process, input, call));
    }
    Ok(history)
}

/// The token after `name` up to the next comma or brace.
fn edn_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name} "))? + name.len() + 1;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// The string after `name` (`nil`: none).
fn edn_string(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("{name} "))? + name.len() + 1;
    let rest = line[at..].strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

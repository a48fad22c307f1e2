//! What a workload records: every operation's invocation and completion,
//! with the client that issued it and monotonic times.

/// One operation as a client saw it. Times are from one monotonic clock (any
/// unit, only their order matters); an operation whose outcome is unknown (it
/// timed out, or its client crashed) has no completion time and no output:
/// it may have taken effect at any moment after its invocation, or never.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    pub call: u64,
    /// `None`: the outcome is unknown.
    pub ret: Option<u64>,
    /// `None`: the outcome is unknown (always so when `ret` is `None`).
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    pub fn completed(client: u64, input: I, call: u64, ret: u64, output: O) -> Self {
        Self {
            client,
            input,
            call,
            ret: Some(ret),
            output: Some(output),
        }
    }

    pub fn unknown(client: u64, input: I, call: u64) -> Self {
        Self {
            client,
            input,
            call,
            ret: None,
            output: None,
        }
    }
}

/// A history: operations in any order.
pub type History<I, O> = Vec<Operation<I, O>>;

/// Draws `ops` as a timeline, one row per client, each operation a bar from
/// its invocation to its completion (`>` to the right edge when unknown),
/// labelled below the bars with its index. For a failing sub-history of a
/// few operations: what the checker prints.
pub fn draw<I: std::fmt::Debug, O: std::fmt::Debug>(ops: &[Operation<I, O>]) -> String {
    let mut times: Vec<u64> = ops
        .iter()
        .flat_map(|o| std::iter::once(o.call).chain(o.ret))
        .collect();
    times.sort_unstable();
    times.dedup();
    // Columns by rank of time, three characters apart.
    let col = |t: u64| times.binary_search(&t).unwrap_or(0) * 3;
    let width = times.len() * 3 + 2;
    let mut clients: Vec<u64> = ops.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut out = String::new();
    for c in clients {
        let mut row = vec![' '; width];
        for (i, o) in ops.iter().enumerate().filter(|(_, o)| o.client == c) {
            let start = col(o.call);
            let end = o.ret.map_or(width - 1, col);
            for cell in row.iter_mut().take(end).skip(start) {
                *cell = '-';
            }
            row[start] = '[';
            row[end] = if o.ret.is_some() { ']' } else { '>' };
            for (k, ch) in i.to_string().chars().enumerate() {
                if start + 1 + k < end {
                    row[start + 1 + k] = ch;
                }
            }
        }
        out.push_str(&format!(
            "client {c:>4} |{}\n",
            row.iter().collect::<String>()
        ));
    }
    for (i, o) in ops.iter().enumerate() {
        let outcome = match &o.output {
            Some(out) => format!("{out:?}"),
            None => "unknown".into(),
        };
        out.push_str(&format!(
            "  {i}: client {} {:?} -> {outcome}\n",
            o.client, o.input
        ));
    }
    out
}

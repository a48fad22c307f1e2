//! Linearizability checking: Wing and Gong's search with Lowe's
//! memoization (the algorithm Porcupine implements), per key
//! (P-compositionality: a history is linearizable when each key's
//! sub-history is).
//!
//! The search walks the history's invocations and completions in time
//! order, tries to linearize each pending operation whose invocation it has
//! reached, and backtracks when it meets a completion of an operation it
//! could not place before it. A cache of (set of linearized operations,
//! state) pairs already explored keeps it from exploring any twice, which
//! makes the search practical on real histories.

use std::collections::HashSet;
use std::hash::Hash;

use crate::history::Operation;
use crate::model::Model;

/// A checker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search used its whole step budget without an answer.
    Unknown,
}

/// What [`check_partitioned`] found.
#[derive(Debug, Clone)]
pub struct Check<K, I, O> {
    pub verdict: Verdict,
    /// The first key whose history is not linearizable (or ran out of budget).
    pub key: Option<K>,
    /// That key's history reduced to a minimal non-linearizable one: taking
    /// away any single operation makes it linearizable. Empty unless the
    /// verdict is [`Verdict::NotLinearizable`].
    pub minimal: Vec<Operation<I, O>>,
    /// Search steps taken, over every key.
    pub steps: u64,
}

/// A history of `M`'s operations.
type OpsOf<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The history as a doubly linked list of events in time order (node 0 is
/// the head), so operations can be taken out and put back in O(1).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation, and whether it is its invocation.
    op: Vec<(usize, bool)>,
    /// For an invocation node: its completion node.
    completion: Vec<usize>,
}

impl Events {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (time, completions after invocations at equal times, op, is_call)
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            order.push((o.call, 0, i, true));
            // Unknown outcomes complete after everything.
            // A completion recorded before its invocation (a recorder's bug)
            // is read as at the invocation.
            order.push((o.ret.map_or(u64::MAX, |r| r.max(o.call)), 1, i, false));
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let mut events = Events {
            next: vec![NIL; n],
            prev: vec![NIL; n],
            op: vec![(usize::MAX, false); n],
            completion: vec![NIL; n],
        };
        let mut call_node = vec![NIL; ops.len()];
        for (k, &(_, _, i, is_call)) in order.iter().enumerate() {
            let node = k + 1;
            events.op[node] = (i, is_call);
            events.prev[node] = node - 1;
            events.next[node - 1] = node;
            if is_call {
                call_node[i] = node;
            } else {
                events.completion[call_node[i]] = node;
            }
        }
        events
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Takes an operation (its invocation node) and its completion out.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.completion[call]);
    }

    /// Puts back what the last [`Events::lift`] took out.
    fn unlift(&mut self, call: usize) {
        self.relink(self.completion[call]);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks one history (one key's) against `model`, taking at most
/// `max_steps` search steps. Returns the verdict and the steps taken.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> (Verdict, u64) {
    let mut events = Events::new(ops);
    let mut state = model.init();
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut entry = events.next[HEAD];
    let mut steps = 0u64;
    while events.next[HEAD] != NIL {
        steps += 1;
        if steps > max_steps {
            return (Verdict::Unknown, steps);
        }
        let (i, is_call) = events.op[entry];
        if is_call {
            let op = &ops[i];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut next_set = linearized.clone();
                next_set.set(i);
                if cache.insert((next_set.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = next_set;
                    events.lift(entry);
                    entry = events.next[HEAD];
                    continue;
                }
            }
            entry = events.next[entry];
        } else {
            // A completion: the operations before it could not all be
            // placed. Undo the last choice and try the next candidate.
            let Some((call, previous)) = stack.pop() else {
                return (Verdict::NotLinearizable, steps);
            };
            let (i, _) = events.op[call];
            linearized.clear(i);
            state = previous;
            events.unlift(call);
            entry = events.next[call];
        }
    }
    (Verdict::Linearizable, steps)
}

/// Reduces a non-linearizable history to a minimal one. First the
/// shortest failing prefix in time (linearizability is prefix-closed, so a
/// binary search finds it: the operations invoked by a moment, those still
/// running then with an unknown outcome), then operations are taken away,
/// last first, while what is left stays non-linearizable, until no single
/// one can be. Each check gets `max_steps`; one that runs out counts as
/// passing, so the result always fails within budget.
pub fn minimize<M: Model>(
    model: &M,
    ops: Vec<Operation<M::Input, M::Output>>,
    max_steps: u64,
) -> Vec<Operation<M::Input, M::Output>>
where
    M::Input: Clone,
    M::Output: Clone,
{
    let fails = |h: &[Operation<M::Input, M::Output>]| {
        check(model, h, max_steps).0 == Verdict::NotLinearizable
    };
    let prefix = |t: u64| -> Vec<Operation<M::Input, M::Output>> {
        ops.iter()
            .filter(|o| o.call <= t)
            .map(|o| match o.ret {
                Some(r) if r <= t => o.clone(),
                _ => Operation {
                    ret: None,
                    output: None,
                    ..o.clone()
                },
            })
            .collect()
    };
    let mut times: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    times.sort_unstable();
    times.dedup();
    // The first completion time whose prefix fails (the whole history does).
    let (mut lo, mut hi) = (0, times.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&prefix(times[mid])) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut ops = match times.get(lo) {
        Some(&t) if fails(&prefix(t)) => prefix(t),
        _ => ops.clone(),
    };
    loop {
        let before = ops.len();
        let mut i = ops.len();
        while i > 0 {
            i -= 1;
            let mut fewer = ops.clone();
            fewer.remove(i);
            if fails(&fewer) {
                ops = fewer;
            }
        }
        if ops.len() == before {
            return ops;
        }
    }
}

/// Checks a history of many keys, each on its own (`key` names an
/// operation's key), at most `max_steps` search steps per key; the first
/// key found not linearizable is reduced to a minimal failing history.
pub fn check_partitioned<M, K>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    key: impl Fn(&Operation<M::Input, M::Output>) -> K,
    max_steps: u64,
) -> Check<K, M::Input, M::Output>
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
    K: Ord + Clone,
{
    let mut by_key: std::collections::BTreeMap<K, OpsOf<M>> = Default::default();
    for op in ops {
        if op.output.is_none() && model.is_read_only(&op.input) {
            continue;
        }
        by_key.entry(key(op)).or_default().push(op.clone());
    }
    let mut steps = 0;
    // Two rounds: every key with a small budget first, so a key that fails
    // fast is found before the whole budget goes on one whose search is
    // long (a non-linearizable history can only be judged by exhausting
    // every order), then the keys left undecided with the whole budget.
    let mut undecided: Vec<(K, OpsOf<M>)> = by_key.into_iter().collect();
    for budget in [(max_steps / 1000).max(10_000).min(max_steps), max_steps] {
        let mut left = Vec::new();
        for (k, history) in undecided {
            let (verdict, taken) = check(model, &history, budget);
            steps += taken;
            match verdict {
                Verdict::Linearizable => {}
                Verdict::Unknown => left.push((k, history)),
                Verdict::NotLinearizable => {
                    let minimal = minimize(model, history, max_steps);
                    return Check {
                        verdict,
                        key: Some(k),
                        minimal,
                        steps,
                    };
                }
            }
        }
        undecided = left;
    }
    let unknown = undecided.into_iter().next().map(|(k, _)| k);
    Check {
        verdict: if unknown.is_some() {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        },
        key: unknown,
        minimal: Vec::new(),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Register, RegisterInput as In, RegisterOutput as Out};

    fn op(client: u64, input: In, call: u64, ret: u64, output: Out) -> Operation<In, Out> {
        Operation::completed(client, input, call, ret, output)
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // A write of 1 overlapping a read of None and a read of 1.
        let h = vec![
            op(0, In::Write(1), 0, 10, Out::Written),
            op(1, In::Read, 1, 2, Out::Read(None)),
            op(2, In::Read, 3, 4, Out::Read(Some(1))),
        ];
        assert_eq!(check(&Register, &h, 1_000).0, Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught_and_minimized() {
        let h = vec![
            op(0, In::Write(1), 0, 1, Out::Written),
            op(3, In::Read, 1, 2, Out::Read(Some(1))),
            op(1, In::Write(2), 2, 3, Out::Written),
            op(2, In::Read, 4, 5, Out::Read(Some(1))),
        ];
        assert_eq!(check(&Register, &h, 1_000).0, Verdict::NotLinearizable);
        // Minimal: with the write of 1 gone, a read of 1 alone already
        // fails (a value nobody wrote), so that is what is left.
        let minimal = minimize(&Register, h.clone(), 1_000);
        assert_eq!(minimal.len(), 1, "{}", crate::history::draw(&minimal));
        assert_eq!(minimal[0].output, Some(Out::Read(Some(1))));
        // With the write kept in the model's reach (a register whose
        // initial value is 1), the stale read needs the second write.
        let without_first: Vec<_> = h[1..].to_vec();
        let minimal = minimize(&StartsAtOne, without_first, 1_000);
        assert_eq!(minimal.len(), 2, "{}", crate::history::draw(&minimal));
        assert_eq!(minimal[0].input, In::Write(2));
    }

    /// A register whose initial value is 1.
    struct StartsAtOne;

    impl Model for StartsAtOne {
        type State = Option<i64>;
        type Input = In;
        type Output = Out;
        fn init(&self) -> Option<i64> {
            Some(1)
        }
        fn step(
            &self,
            state: &Option<i64>,
            input: &In,
            output: Option<&Out>,
        ) -> Option<Option<i64>> {
            Register.step(state, input, output)
        }
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let h = vec![
            Operation::unknown(0, In::Write(7), 0),
            op(1, In::Read, 1, 2, Out::Read(None)),
            op(1, In::Read, 3, 4, Out::Read(Some(7))),
            op(1, In::Read, 5, 6, Out::Read(Some(7))),
        ];
        assert_eq!(check(&Register, &h, 1_000).0, Verdict::Linearizable);
        let never = vec![
            Operation::unknown(0, In::Write(7), 0),
            op(1, In::Read, 5, 6, Out::Read(None)),
        ];
        assert_eq!(check(&Register, &never, 1_000).0, Verdict::Linearizable);
        // ...but not flicker back once it was seen.
        let flicker = vec![
            Operation::unknown(0, In::Write(7), 0),
            op(1, In::Read, 3, 4, Out::Read(Some(7))),
            op(1, In::Read, 5, 6, Out::Read(None)),
        ];
        assert_eq!(
            check(&Register, &flicker, 1_000).0,
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn the_step_budget_bounds_the_search() {
        let h: Vec<_> = (0..40)
            .map(|i| op(i, In::Write(i as i64), 0, 100, Out::Written))
            .chain([op(99, In::Read, 101, 102, Out::Read(Some(-1)))])
            .collect();
        assert_eq!(check(&Register, &h, 50).0, Verdict::Unknown);
    }
}

#[cfg(test)]
mod unknown_read_tests {
    use super::*;
    use crate::model::{Register, RegisterInput, RegisterOutput};

    /// Reads whose outcome is unknown are left out: a history full of them
    /// is decided in a few steps, and the verdict is the same without them.
    #[test]
    fn unknown_reads_cost_nothing_and_change_no_verdict() {
        let mut ops = vec![Operation::completed(
            0,
            RegisterInput::Write(1),
            0,
            1,
            RegisterOutput::Written,
        )];
        for c in 0..60 {
            ops.push(Operation::unknown(c + 1, RegisterInput::Read, 2));
        }
        ops.push(Operation::completed(
            99,
            RegisterInput::Read,
            3,
            4,
            RegisterOutput::Read(Some(1)),
        ));
        let linearizable = check_partitioned(&Register, &ops, |_| 0, 10_000);
        assert_eq!(linearizable.verdict, Verdict::Linearizable);
        assert!(linearizable.steps < 100, "{} steps", linearizable.steps);
        ops.push(Operation::completed(
            99,
            RegisterInput::Read,
            5,
            6,
            RegisterOutput::Read(Some(7)),
        ));
        let stale = check_partitioned(&Register, &ops, |_| 0, 10_000);
        assert_eq!(stale.verdict, Verdict::NotLinearizable);
    }
}

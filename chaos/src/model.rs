//! Sequential specifications of the objects workloads exercise: what each
//! operation may return from a state and the state it leaves.

use std::fmt::Debug;
use std::hash::Hash;

/// A sequential object.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` is applied to `state`, if it could have
    /// returned `output` there (`None`: the outcome is unknown, so any
    /// output is possible); `None` when it could not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether `input` never changes the state (a read). An operation that
    /// does not and whose outcome is unknown constrains nothing, and the
    /// checker leaves it out: kept, it could be placed anywhere after its
    /// invocation, and every such read multiplies the orders to explore.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// A register operation (etcd's single register in Jepsen's tests, and
/// Chronicle's state store keys under the register workload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Write(i64),
    /// Compare-and-set: set `to` when the value is `from`.
    Cas {
        from: i64,
        to: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// `None`: the register was never written.
    Read(Option<i64>),
    Written,
    /// Whether the compare-and-set applied.
    Cas(bool),
}

/// A register that starts unwritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read)
    }

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<i64>> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(*state),
            (RegisterInput::Read, Some(RegisterOutput::Read(v))) => (v == state).then_some(*state),
            (RegisterInput::Write(v), None | Some(RegisterOutput::Written)) => Some(Some(*v)),
            (RegisterInput::Cas { from, to }, None) => {
                // Unknown: had it applied it would have set `to`; had it
                // not, nothing changed (and an operation that never took
                // effect can always be placed after everything else).
                Some(if *state == Some(*from) {
                    Some(*to)
                } else {
                    *state
                })
            }
            (RegisterInput::Cas { from, to }, Some(RegisterOutput::Cas(applied))) => {
                let matches = *state == Some(*from);
                if matches != *applied {
                    None
                } else if matches {
                    Some(Some(*to))
                } else {
                    Some(*state)
                }
            }
            _ => None,
        }
    }
}

/// A string-valued key's operations (Porcupine's key-value histories).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    Get,
    Put(String),
    Append(String),
}

/// A key that starts as the empty string; `Get` returns the value, `Put` and
/// `Append` return the empty string.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvString;

impl Model for KvString {
    type State = String;
    type Input = KvInput;
    type Output = String;

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get)
    }

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: Option<&String>) -> Option<String> {
        match input {
            KvInput::Get => match output {
                Some(v) if v != state => None,
                _ => Some(state.clone()),
            },
            KvInput::Put(v) => Some(v.clone()),
            KvInput::Append(v) => Some(format!("{state}{v}")),
        }
    }
}

/// An operation on one key of many.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keyed<I> {
    pub key: String,
    pub input: I,
}

/// `M` for each key of a history of [`Keyed`] operations: check it with
/// [`crate::check_partitioned`] keyed by `op.input.key`, so every key's
/// operations are judged against their own object.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerKey<M>(pub M);

impl<M: Model> Model for PerKey<M> {
    type State = M::State;
    type Input = Keyed<M::Input>;
    type Output = M::Output;

    fn is_read_only(&self, input: &Keyed<M::Input>) -> bool {
        self.0.is_read_only(&input.input)
    }

    fn init(&self) -> M::State {
        self.0.init()
    }

    fn step(
        &self,
        state: &M::State,
        input: &Keyed<M::Input>,
        output: Option<&M::Output>,
    ) -> Option<M::State> {
        self.0.step(state, &input.input, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_reads_what_was_last_written_and_cas_compares() {
        let r = Register;
        let s = r.init();
        assert_eq!(
            r.step(&s, &RegisterInput::Read, Some(&RegisterOutput::Read(None))),
            Some(None)
        );
        assert_eq!(
            r.step(
                &s,
                &RegisterInput::Read,
                Some(&RegisterOutput::Read(Some(1)))
            ),
            None
        );
        let s = r
            .step(&s, &RegisterInput::Write(3), Some(&RegisterOutput::Written))
            .unwrap();
        let cas = |from, to| RegisterInput::Cas { from, to };
        assert_eq!(
            r.step(&s, &cas(3, 4), Some(&RegisterOutput::Cas(true))),
            Some(Some(4))
        );
        assert_eq!(
            r.step(&s, &cas(2, 4), Some(&RegisterOutput::Cas(true))),
            None
        );
        assert_eq!(
            r.step(&s, &cas(2, 4), Some(&RegisterOutput::Cas(false))),
            Some(Some(3))
        );
        assert_eq!(
            r.step(&s, &cas(3, 4), Some(&RegisterOutput::Cas(false))),
            None
        );
        assert_eq!(r.step(&s, &cas(3, 4), None), Some(Some(4)));
    }
}

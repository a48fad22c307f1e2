//! A session's document: a yrs `Doc` holding the query text (`Y.Text`
//! "query"), its settings (`Y.Map` "meta": the language) and annotations
//! on results (`Y.Array` "annotations" of maps). Plain Rust, no runtime:
//! the session actor owns one and everything here is unit-testable.
//!
//! Every change, from a Yjs client or from the JSON protocol, is a yrs
//! update: a JSON `update_query` becomes the smallest delete and insert
//! that turn the current text into the new one, so it merges with
//! concurrent Yjs edits instead of overwriting them.

use serde::{Deserialize, Serialize};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapRef, ReadTxn, StateVector, Text, TextRef,
    Transact, Update,
};

use crate::wire::{check_stored_update, WireError};

/// The languages a session's query can be in.
pub const LANGUAGES: &[&str] = &["promql", "sql", "cql"];

/// One annotation on a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annotation {
    /// Who wrote it (set by the server from the participant, not the client).
    #[serde(default)]
    pub author: String,
    /// The time range it is about, ns since the epoch.
    pub start: i64,
    pub end: i64,
    /// The series it is about (a label selector or series text), if any.
    #[serde(default)]
    pub series: String,
    pub text: String,
    /// When it was written, ms since the epoch (set by the server).
    #[serde(default)]
    pub at_ms: i64,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("update: {0}")]
    Update(String),
    #[error("{0}")]
    Invalid(String),
}

/// The shared document of one session.
pub struct SessionDoc {
    doc: Doc,
    text: TextRef,
    meta: MapRef,
    annotations: ArrayRef,
}

impl Default for SessionDoc {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionDoc {
    pub fn new() -> Self {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("query");
        let meta = doc.get_or_insert_map("meta");
        let annotations = doc.get_or_insert_array("annotations");
        Self {
            doc,
            text,
            meta,
            annotations,
        }
    }

    /// A document from a stored state (a v1 update), checked like a client's.
    pub fn from_state(state: &[u8]) -> Result<Self, DocError> {
        let doc = Self::new();
        doc.apply(state)?;
        Ok(doc)
    }

    /// Applies a v1 update after checking it (applying one twice changes
    /// nothing: updates are idempotent and commute).
    pub fn apply(&self, update: &[u8]) -> Result<(), DocError> {
        self.apply_changed(update).map(|_| ())
    }

    /// [`apply`](Self::apply), telling whether the document changed (an
    /// update it already held changes nothing).
    pub fn apply_changed(&self, update: &[u8]) -> Result<bool, DocError> {
        // Participants' frames were checked strictly when they came.
        check_stored_update(update)?;
        let update = Update::decode_v1(update).map_err(|e| DocError::Update(e.to_string()))?;
        let mut txn = self.doc.transact_mut();
        txn.apply_update(update)
            .map_err(|e| DocError::Update(e.to_string()))?;
        Ok(!txn.insert_set().is_empty() || !txn.delete_set().is_empty())
    }

    /// Whether a copy read back from its state holds the same text,
    /// language and annotations. yrs integrates some crafted updates one
    /// way live and another on reload; a session checks every participant
    /// update with this (its cost is the document's size) and undoes one
    /// that breaks it, so every node that opens the session sees what the
    /// participants saw.
    pub fn reloads_the_same(&self) -> bool {
        match Self::from_state(&self.encode_state()) {
            Ok(copy) => {
                copy.query_text() == self.query_text()
                    && copy.language() == self.language()
                    && copy.annotation_count() == self.annotation_count()
            }
            Err(_) => false,
        }
    }

    /// Whether it holds updates that wait for others it never received.
    pub fn has_missing_updates(&self) -> bool {
        self.doc.transact().has_missing_updates()
    }

    /// The Yjs client id of edits made here (JSON participants' operations).
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// What a replica at `sv` lacks, as a v1 update.
    pub fn diff(&self, sv: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_state_as_update_v1(sv)
    }

    /// The whole state as one v1 update (what a snapshot stores).
    pub fn encode_state(&self) -> Vec<u8> {
        self.diff(&StateVector::default())
    }

    pub fn query_text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// The query's language (`promql` unless set).
    pub fn language(&self) -> String {
        let txn = self.doc.transact();
        match self.meta.get(&txn, "language") {
            Some(yrs::Out::Any(Any::String(s))) if LANGUAGES.contains(&&*s) => s.to_string(),
            _ => "promql".into(),
        }
    }

    /// Replaces the query text with `new` by the smallest edit (common
    /// prefix and suffix kept); the update, or `None` when nothing changed.
    pub fn set_query(&self, new: &str) -> Option<Vec<u8>> {
        let mut txn = self.doc.transact_mut();
        let old = self.text.get_string(&txn);
        if old == new {
            return None;
        }
        let prefix = common_prefix(&old, new);
        let suffix = common_suffix(&old[prefix..], &new[prefix..]);
        let removed = old.len() - prefix - suffix;
        if removed > 0 {
            self.text
                .remove_range(&mut txn, prefix as u32, removed as u32);
        }
        let inserted = &new[prefix..new.len() - suffix];
        if !inserted.is_empty() {
            self.text.insert(&mut txn, prefix as u32, inserted);
        }
        Some(txn.encode_update_v1())
    }

    pub fn set_language(&self, language: &str) -> Result<Option<Vec<u8>>, DocError> {
        if !LANGUAGES.contains(&language) {
            return Err(DocError::Invalid(format!(
                "language {language:?}: promql, sql or cql"
            )));
        }
        if self.language() == language {
            return Ok(None);
        }
        let mut txn = self.doc.transact_mut();
        self.meta.insert(&mut txn, "language", language);
        Ok(Some(txn.encode_update_v1()))
    }

    pub fn add_annotation(&self, a: &Annotation) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        let value = Any::from(std::collections::HashMap::from([
            ("author".to_string(), Any::from(a.author.as_str())),
            ("start".to_string(), Any::BigInt(a.start)),
            ("end".to_string(), Any::BigInt(a.end)),
            ("series".to_string(), Any::from(a.series.as_str())),
            ("text".to_string(), Any::from(a.text.as_str())),
            ("at_ms".to_string(), Any::BigInt(a.at_ms)),
        ]));
        self.annotations.push_back(&mut txn, value);
        txn.encode_update_v1()
    }

    pub fn annotation_count(&self) -> u32 {
        self.annotations.len(&self.doc.transact())
    }

    /// The annotations that read as annotations (a Yjs client may push
    /// anything into the array; what does not fit is left out).
    pub fn annotations(&self) -> Vec<Annotation> {
        let txn = self.doc.transact();
        let json = self.annotations.to_json(&txn);
        let Any::Array(items) = json else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let Any::Map(m) = item else { return None };
                let text = |k: &str| match m.get(k) {
                    Some(Any::String(s)) => s.to_string(),
                    _ => String::new(),
                };
                let int = |k: &str| match m.get(k) {
                    Some(Any::BigInt(i)) => Some(*i),
                    Some(Any::Number(n)) => Some(*n as i64),
                    _ => None,
                };
                Some(Annotation {
                    author: text("author"),
                    start: int("start")?,
                    end: int("end")?,
                    series: text("series"),
                    text: text("text"),
                    at_ms: int("at_ms").unwrap_or(0),
                })
            })
            .collect()
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) || !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn common_suffix(a: &str, b: &str) -> usize {
    let mut n = a
        .bytes()
        .rev()
        .zip(b.bytes().rev())
        .take_while(|(x, y)| x == y)
        .count();
    while !a.is_char_boundary(a.len() - n) || !b.is_char_boundary(b.len() - n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_update_that_would_not_reload_the_same_is_caught() {
        // The fuzzer's seventh find: frames of several updates whose items
        // name neighbours that were never next to each other. Applied as a
        // session applies them, one leaves a document whose reloaded copy
        // differs; undoing it keeps every later copy equal.
        use crate::wire::{decode_frame, dependencies, ClientMessage, FrameLimits};
        let frame = include_bytes!(
            "../../../fuzz/regressions/collab_frame/divergent-reload-multi-message.bin"
        );
        let mut doc = SessionDoc::new();
        doc.set_query("sum(rate(x[5m]))");
        let mut caught = 0;
        for m in decode_frame(frame, &FrameLimits::default()).unwrap() {
            let (ClientMessage::Update(u) | ClientMessage::SyncStep2(u)) = m else {
                continue;
            };
            if dependencies(&u)
                .unwrap()
                .missing(&doc.state_vector())
                .is_some()
            {
                continue;
            }
            let before = doc.encode_state();
            if doc.apply(&u).is_err() || !doc.reloads_the_same() {
                caught += 1;
                doc = SessionDoc::from_state(&before).unwrap();
            }
        }
        assert!(caught > 0, "the frame no longer needs the check");
        let again = SessionDoc::from_state(&doc.encode_state()).unwrap();
        assert_eq!(again.query_text(), doc.query_text());
    }

    fn sync(a: &SessionDoc, b: &SessionDoc) {
        let to_b = a.diff(&b.state_vector());
        let to_a = b.diff(&a.state_vector());
        b.apply(&to_b).unwrap();
        a.apply(&to_a).unwrap();
    }

    #[test]
    fn a_json_update_is_a_minimal_edit_that_merges_with_a_concurrent_one() {
        let a = SessionDoc::new();
        let base = a.set_query("sum(rate(x[5m]))").unwrap();
        let b = SessionDoc::from_state(&a.encode_state()).unwrap();
        assert_eq!(b.query_text(), "sum(rate(x[5m]))");
        // Concurrently: a changes the window, b the function.
        a.set_query("sum(rate(x[10m]))").unwrap();
        b.set_query("avg(rate(x[5m]))").unwrap();
        sync(&a, &b);
        assert_eq!(a.query_text(), b.query_text());
        assert_eq!(a.query_text(), "avg(rate(x[10m]))");
        assert!(a.set_query("avg(rate(x[10m]))").is_none());
        assert!(!base.is_empty());
    }

    #[test]
    fn language_and_annotations_replicate() {
        let a = SessionDoc::new();
        assert_eq!(a.language(), "promql");
        a.set_language("sql").unwrap();
        assert!(a.set_language("cobol").is_err());
        a.add_annotation(&Annotation {
            author: "ada".into(),
            start: 1,
            end: 2,
            series: "{job=\"api\"}".into(),
            text: "deploy here".into(),
            at_ms: 5,
        });
        let b = SessionDoc::from_state(&a.encode_state()).unwrap();
        assert_eq!(b.language(), "sql");
        assert_eq!(b.annotations(), a.annotations());
        assert_eq!(b.annotations()[0].text, "deploy here");
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, String),
        Delete(usize, usize),
        Replace(String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0usize..64, "[a-zé😀 (){}]{0,6}").prop_map(|(i, s)| Edit::Insert(i, s)),
            (0usize..64, 0usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
            "[a-z(){}]{0,12}".prop_map(Edit::Replace),
        ]
    }

    fn apply_edit(doc: &SessionDoc, e: &Edit) -> Option<Vec<u8>> {
        let text = doc.query_text();
        let at = |i: usize| {
            let mut i = i.min(text.len());
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match e {
            Edit::Insert(i, s) => {
                let i = at(*i);
                doc.set_query(&format!("{}{s}{}", &text[..i], &text[i..]))
            }
            Edit::Delete(i, n) => {
                let (i, j) = (at(*i), at(i + n));
                doc.set_query(&format!("{}{}", &text[..i], &text[j..]))
            }
            Edit::Replace(s) => doc.set_query(s),
        }
    }

    proptest! {
        /// Three replicas edit concurrently, exchange their updates in any
        /// order (some held back, as for a client offline for a while, some
        /// delivered twice) and end with the same text.
        #[test]
        fn replicas_converge_whatever_the_delivery_order(
            edits in proptest::collection::vec((0usize..3, edit()), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
            duplicate in any::<bool>(),
        ) {
            let replicas = [SessionDoc::new(), SessionDoc::new(), SessionDoc::new()];
            let mut outbox: Vec<(usize, Vec<u8>)> = Vec::new();
            for (who, e) in &edits {
                if let Some(u) = apply_edit(&replicas[*who], e) {
                    outbox.push((*who, u));
                }
            }
            // Deliver a shuffled selection first (some twice), then everything.
            let mut delivered = Vec::new();
            for idx in &order {
                if outbox.is_empty() { break; }
                let (from, u) = &outbox[idx.index(outbox.len())];
                for (to, r) in replicas.iter().enumerate() {
                    if to != *from {
                        r.apply(u).unwrap();
                    }
                }
                delivered.push(u.clone());
                if !duplicate { continue; }
                replicas[(from + 1) % 3].apply(u).unwrap();
            }
            for (from, u) in &outbox {
                for (to, r) in replicas.iter().enumerate() {
                    if to != *from {
                        r.apply(u).unwrap();
                    }
                }
            }
            let text = replicas[0].query_text();
            prop_assert_eq!(&replicas[1].query_text(), &text);
            prop_assert_eq!(&replicas[2].query_text(), &text);
            // Every replica's state is the same, not only the text.
            prop_assert_eq!(replicas[1].state_vector(), replicas[0].state_vector());
        }
    }
}

//! The replicas' own invariants, checked as the run goes (Raft figure 3): election safety (at most
//! one leader per term) and state machine safety (no two replicas apply different entries at one
//! index); and at the end, that every replica's applied sequence is a prefix of the longest one.

use std::collections::BTreeMap;

use chorus_core::types::{LogIndex, NodeId, Term};

/// Election safety, from the leaders the replicas announce.
#[derive(Debug, Default, Clone)]
pub struct ElectionSafety {
    leaders: BTreeMap<Term, NodeId>,
}

impl ElectionSafety {
    /// `node` became leader of `term`. An error if another node led that term.
    pub fn observe(&mut self, term: Term, node: NodeId) -> Result<(), String> {
        let first = *self.leaders.entry(term).or_insert(node);
        if first == node {
            Ok(())
        } else {
            Err(format!("election safety: nodes {first} and {node} both led term {term}"))
        }
    }

    /// Terms that had a leader.
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }
}

/// State machine safety: the term of the entry applied at each index, by whichever replica applied
/// it first. Entries are identified by (index, term): Raft's log matching makes that unique.
#[derive(Debug, Default, Clone)]
pub struct AppliedLog {
    /// The term applied at index `i` is at position `i - 1`.
    terms: Vec<Term>,
}

impl AppliedLog {
    /// `node` applied the entry (`index`, `term`). An error if a replica applied another entry there.
    pub fn observe(&mut self, node: NodeId, index: LogIndex, term: Term) -> Result<(), String> {
        let position = usize::try_from(index.0).unwrap_or(usize::MAX).saturating_sub(1);
        match self.terms.get(position) {
            Some(first) if *first == term => Ok(()),
            Some(first) => Err(format!(
                "state machine safety: node {node} applied entry {index} of term {term}, another replica the one of term {first}"
            )),
            None if position == self.terms.len() => {
                self.terms.push(term);
                Ok(())
            }
            None => Err(format!(
                "node {node} applied entry {index} while nothing is known applied after {}",
                self.terms.len()
            )),
        }
    }

    pub fn len(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Every sequence (the terms of the entries a replica applied, index 1 first) must be a prefix of
/// the longest. Returns one line per replica that is not.
pub fn check_prefixes(sequences: &[(NodeId, &[Term])]) -> Vec<String> {
    let Some((longest_node, longest)) = sequences.iter().max_by_key(|(_, terms)| terms.len()) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (node, terms) in sequences {
        if let Some(at) = terms.iter().zip(longest.iter()).position(|(a, b)| a != b) {
            problems.push(format!(
                "applied logs diverge: node {node} applied term {} at index {}, node {longest_node} term {}",
                terms[at],
                at + 1,
                longest[at]
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_term() {
        let mut safety = ElectionSafety::default();
        assert!(safety.observe(Term(1), NodeId(1)).is_ok());
        assert!(safety.observe(Term(1), NodeId(1)).is_ok(), "the same leader announced twice");
        assert!(safety.observe(Term(2), NodeId(2)).is_ok());
        let error = safety.observe(Term(1), NodeId(3)).expect_err("a second leader of term 1");
        assert!(error.contains("nodes 1 and 3 both led term 1"), "{error}");
        assert_eq!(safety.terms_led(), 2);
    }

    #[test]
    fn one_entry_per_index() {
        let mut applied = AppliedLog::default();
        assert!(applied.observe(NodeId(1), LogIndex(1), Term(1)).is_ok());
        assert!(applied.observe(NodeId(2), LogIndex(1), Term(1)).is_ok());
        assert!(applied.observe(NodeId(2), LogIndex(2), Term(2)).is_ok());
        assert!(applied.observe(NodeId(3), LogIndex(2), Term(3)).is_err());
        assert!(applied.observe(NodeId(3), LogIndex(9), Term(3)).is_err(), "a gap");
        assert_eq!(applied.len(), 2);
    }

    #[test]
    fn applied_sequences_must_be_prefixes() {
        let a = [Term(1), Term(1), Term(2)];
        let b = [Term(1), Term(1)];
        let c = [Term(1), Term(3)];
        assert!(check_prefixes(&[(NodeId(1), &a), (NodeId(2), &b)]).is_empty());
        let problems = check_prefixes(&[(NodeId(1), &a), (NodeId(2), &b), (NodeId(3), &c)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("node 3 applied term 3 at index 2"), "{problems:?}");
    }
}

//! Preference data for gramrr: canonical records ([`record`]), readers for the public formats
//! ([`read`], [`formats`]), judge prompt templates ([`prompt`]), the verdict parser
//! ([`verdict`]), the reversible rationale ⇄ proof form ([`proof`]) and the rule filters for
//! synthesized rationales ([`filter`]).

pub mod filter;
pub mod formats;
pub mod proof;
pub mod prompt;
pub mod read;
pub mod record;
pub mod verdict;

pub use record::{CandidateList, Conversation, Label, PreferencePair};

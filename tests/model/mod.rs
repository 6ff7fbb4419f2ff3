//! An explicit-state model checker of the pure decision core (issue 18, item 6): `world` is the
//! model and its executor over the real planner, `check` the search and the properties.

pub mod check;
pub mod world;

//! `recipe-graph` turns a checked recipe into its stage graph: a node for tokenizer training
//! (when asked), one per tokenized source and one per stage, in topological order, each with a
//! content key — blake3 over the node's semantic configuration, the content of its input files
//! and the keys of its inputs, so a node is redone exactly when something it reads changed.
//! It owns the run directory's layout and its lock file, the atomic file writes every crate
//! uses, reports each node's state (`status`), and explains what a change to the recipe
//! invalidates and why (`diff`). It never runs a node and knows nothing of what a node does:
//! the executor (`recipe-run`) drives the lifecycle through [`RunDir`].

mod diff;
mod graph;
mod rundir;
mod status;

pub use diff::{Change, Diff, NodeChange, diff, field_changes};
pub use graph::{Field, Graph, Material, Node, NodeKind, TOKENIZER_NODE, hash_file, tokenize_node};
pub use rundir::{
    LOCK_VERSION, Lock, LockEntry, RecordedState, RunDir, TENSORBOARD_DIR, Writer, checkpoint_dir, checkpoint_steps,
    sync_dir, write_atomic,
};
pub use status::{NodeStatus, State, describe, status};

//! Training data: reading corpora, tokenizing once into a memory-mapped cache, and
//! cutting token streams into deterministic, resumable batches.

pub mod corpus;
pub mod labeled;
pub mod lm;
pub mod mlm;
pub mod nat;
pub mod npy;
pub mod nsp;
pub mod order;
pub mod padding;
pub mod pairs;
pub mod part;
pub mod tokens;

pub use corpus::read_documents;
pub use lm::LmBatches;
pub use padding::{pad_batch, Padding};
pub use part::Part;
pub use tokens::{tokenize_cached, TokenBuffer};

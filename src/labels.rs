//! The label that marks a position no loss is taken at: padding after a target, tokens
//! the masked LM did not choose, the [CLS] and [SEP] of a pretraining pair. Data builds
//! label tensors with it and the losses skip it; a leaf module, so that neither imports
//! the other.

/// A target equal to this contributes no loss and no gradient.
pub const IGNORE: u32 = u32::MAX;

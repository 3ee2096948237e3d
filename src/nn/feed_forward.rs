//! The position-wise feed-forward network: expand, non-linearity, project back.

use candle_core::{Result, Tensor};

use super::{dropout, Activation, Linear};

#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
    activation: Activation,
    dropout: f64,
}

impl FeedForward {
    pub fn new(up: Linear, down: Linear, activation: Activation, dropout: f64) -> Self {
        Self {
            up,
            down,
            activation,
            dropout,
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.up, &mut self.down]
    }

    /// (B, T, C) -> (B, T, 4C) -> (B, T, C), dropout on the output.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.activation.forward(&self.up.forward_t(x, train)?)?;
        dropout(&self.down.forward_t(&h, train)?, self.dropout, train)
    }
}

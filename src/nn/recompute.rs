//! Gradient checkpointing: a block's activations are recomputed in the backward pass
//! instead of being kept from the forward pass.
//!
//! Why: candle's backward walks a graph in which every op holds its inputs, so a
//! training step keeps every block's intermediate tensors alive until the backward
//! pass (for GPT-2 124M at batch 4 × 256, about 100 MB a block). With checkpointing
//! each block keeps only its input; the backward pass runs the block again, one at a
//! time, and differentiates that copy. The price is one more forward pass per step.
//!
//! How, without a hook in candle: in the forward pass [`segment`] runs the block,
//! detaches its output from the block's graph (which is then freed) and hands the rest
//! of the model a copy that is a leaf variable, so the backward pass from the loss
//! stops there and leaves that leaf's gradient g in the store. [`backward`] then takes
//! the blocks last to first: it reruns the block on its recorded input, with the
//! dropout generator where it stood in the forward pass (the same masks), and
//! backpropagates sum(y · g), whose gradient with respect to the rerun output y is
//! exactly g. That lands the block's parameter gradients and, on the block's input,
//! the previous block's g, summed into the one store.
//!
//! The tape is per thread, like the dropout generator, because the shards of a batch
//! run forward and backward side by side on their own threads.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

type Rerun = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

/// One checkpointed block of the last forward pass.
struct Segment {
    /// What the block read: the previous block's leaf, or a tensor with its own graph
    /// (the embeddings) that the block's backward pass then walks into.
    input: Tensor,
    /// The leaf the rest of the forward pass read instead of the block's output.
    output: Tensor,
    dropout: Option<rand::rngs::StdRng>,
    rerun: Rerun,
}

thread_local! {
    static TAPE: std::cell::RefCell<Vec<Segment>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Forgets the segments of a forward pass whose backward pass never ran (an error in
/// between); called before each training forward pass ([`super::seed_dropout`]).
pub(crate) fn clear() {
    TAPE.with(|t| t.borrow_mut().clear());
}

/// block(x), keeping only x for the backward pass. `block` must compute the same thing
/// each time it is called (it owns clones of the layer's weights and masks, which are
/// shared, not copied). Blocks with nothing to train behind them (a frozen model's
/// layer with no update) are run plainly: there is no gradient to recompute.
pub fn segment(x: &Tensor, block: impl Fn(&Tensor) -> Result<Tensor> + 'static) -> Result<Tensor> {
    let dropout = super::dropout_state();
    let y = block(x)?;
    if !y.track_op() {
        return Ok(y);
    }
    let output = Var::from_tensor(&y.detach())?.into_inner(); // a copy: y's graph goes now
    TAPE.with(|t| {
        t.borrow_mut().push(Segment {
            input: x.clone(),
            output: output.clone(),
            dropout,
            rerun: Box::new(block),
        })
    });
    Ok(output)
}

/// Blocks recorded on this thread whose backward pass is still to run.
pub fn recorded() -> usize {
    TAPE.with(|t| t.borrow().len())
}

/// The gradients of `loss`, as `loss.backward()` would give them had no block been
/// checkpointed, detached from the graph. Without checkpointed blocks on this thread it
/// is `loss.backward()`, detached.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    let tape = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut grads = detached(loss.backward()?);
    let before = super::dropout_state();
    for seg in tape.into_iter().rev() {
        // A block whose output did not reach the loss has no gradient to pass on.
        let Some(g) = grads.remove(&seg.output) else {
            continue;
        };
        super::set_dropout_state(seg.dropout);
        let y = (seg.rerun)(&seg.input)?; // the forward pass's output again
        grads.extend(detached((y * g)?.sum_all()?.backward()?))?;
    }
    super::set_dropout_state(before);
    Ok(grads)
}

/// `grads` without their graphs. candle detaches the gradients of inner nodes as its
/// backward pass goes, but not those of the leaves it returns: a parameter's gradient
/// computed by a composed op (LayerNorm's, say) still refers to the activations it was
/// computed from. Kept, such a store keeps the whole graph alive after the loss is
/// dropped: through the shards' sum and the optimizer step, and here from one
/// recomputed block to the next. A leaf's gradient reused as a seed (g above) must not
/// carry its graph into the next backward pass either.
fn detached(mut grads: GradStore) -> GradStore {
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        let g = grads.get_id(id).expect("listed").detach();
        grads.insert_id(id, g);
    }
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{dropout, seed_dropout};
    use candle_core::{DType, Device};

    /// A stack of three "blocks" (x -> x + dropout(tanh(x·W_i))) over an embedding-like
    /// input with its own graph, and a loss that also reads the first block's output.
    fn run(checkpointed: bool) -> (f32, Vec<Vec<f32>>) {
        let dev = Device::Cpu;
        let e = Var::from_tensor(
            &Tensor::arange(0f32, 12., &dev)
                .unwrap()
                .reshape((3, 4))
                .unwrap()
                .affine(0.1, -0.5)
                .unwrap(),
        )
        .unwrap();
        let ws: Vec<Var> = (0..3)
            .map(|i| {
                let w = Tensor::arange(0f32, 16., &dev)
                    .unwrap()
                    .reshape((4, 4))
                    .unwrap();
                Var::from_tensor(&(w * (1.3 + i as f64)).unwrap().sin().unwrap()).unwrap()
            })
            .collect();
        seed_dropout(7);
        let mut x = (e.as_tensor() * 2.0).unwrap(); // (3, 4), a graph back to e
        let mut first = None;
        for w in &ws {
            let w = w.as_tensor().clone();
            let block = move |x: &Tensor| -> Result<Tensor> {
                x + dropout(&x.matmul(&w)?.tanh()?, 0.3, true)?
            };
            x = if checkpointed {
                segment(&x, block).unwrap()
            } else {
                block(&x).unwrap()
            };
            first.get_or_insert_with(|| x.clone());
        }
        let loss =
            (x.sqr().unwrap().sum_all().unwrap() + first.unwrap().sum_all().unwrap()).unwrap();
        if checkpointed {
            assert_eq!(recorded(), 3);
        }
        let grads = backward(&loss).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        let all = std::iter::once(&e)
            .chain(&ws)
            .map(|v| {
                grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (value, all)
    }

    #[test]
    fn checkpointed_blocks_give_the_plain_backward_pass_gradients() {
        let (plain, ckpt) = (run(false), run(true));
        assert_eq!(plain.0, ckpt.0, "the forward pass is the same");
        for (k, (a, b)) in plain.1.iter().zip(&ckpt.1).enumerate() {
            for (p, q) in a.iter().zip(b) {
                assert!(
                    (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                    "gradient {k}: {p} vs {q}"
                );
            }
        }
        assert!(plain.1.iter().flatten().any(|g| *g != 0.0));
        assert_eq!(recorded(), 0, "the backward pass used the tape up");
    }

    #[test]
    fn a_block_with_nothing_to_train_is_not_recorded() {
        clear();
        let x = Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = segment(&x, |x| x * 3.0).unwrap();
        assert!(!y.is_variable());
        assert_eq!(recorded(), 0);
    }
}

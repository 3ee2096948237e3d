//! Batching texts of different lengths for the tasks: longest first, so each batch
//! holds similar lengths (padding itself is [`crate::data::pad_batch`]), and on the CPU
//! neighbouring batches side by side.

use crate::nn::kernels::parallel::serial;

/// Runs `f` over the texts in batches of `batch_size`, longest texts first so each batch
/// holds similar lengths (less padding, as sentence-transformers does), and returns the
/// results in input order. `on_batch(n)` is told how many texts each batch finished.
///
/// With `side_by_side` (the CPU), neighbouring batches run at once, one per thread of
/// the pool, each kept on its thread ([`serial`]): a batch of short texts is too small
/// for one matrix product to split well over the cores (two threads ran MiniLM no faster
/// than one), while whole batches keep every core busy, as sharded training does. Each
/// batch's result is the same whichever thread computes it.
pub fn map_batches<T: Send>(
    texts: &[String],
    batch_size: usize,
    side_by_side: bool,
    f: impl Fn(&[String]) -> crate::error::Result<Vec<T>> + Sync,
    mut on_batch: impl FnMut(usize),
) -> crate::error::Result<Vec<T>> {
    use rayon::prelude::*;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let batches: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    let width = match side_by_side {
        true => rayon::current_num_threads().max(1),
        false => 1,
    };
    let run = |chunk: &[usize]| {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        f(&batch)
    };
    let mut out: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    for group in batches.chunks(width) {
        let results: Vec<crate::error::Result<Vec<T>>> = match group {
            [one] => vec![run(one)],
            _ => group.par_iter().map(|c| serial(|| run(c))).collect(),
        };
        for (chunk, r) in group.iter().zip(results) {
            for (&i, r) in chunk.iter().zip(r?) {
                out[i] = Some(r);
            }
            on_batch(chunk.len());
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every text batched"))
        .collect())
}

/// [`map_batches`] with a progress bar on stderr (when there is more than one batch):
/// `what` names the work.
pub fn map_batches_shown<T: Send>(
    texts: &[String],
    batch_size: usize,
    side_by_side: bool,
    what: &str,
    f: impl Fn(&[String]) -> crate::error::Result<Vec<T>> + Sync,
) -> crate::error::Result<Vec<T>> {
    let pb = if texts.len() > batch_size {
        let pb = indicatif::ProgressBar::new(texts.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} texts, {per_sec}, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let out = map_batches(texts, batch_size, side_by_side, f, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn batches_by_length_and_restores_order() {
        let texts: Vec<String> = ["a", "ccc", "bb", "dddd", "e"].map(String::from).to_vec();
        // Two threads: the first two batches run side by side, the lone third alone.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for side_by_side in [false, true] {
            let seen = std::sync::Mutex::new(vec![]);
            let mut done = vec![];
            let out = pool.install(|| {
                map_batches(
                    &texts,
                    2,
                    side_by_side,
                    |b| {
                        let split = crate::nn::kernels::parallel::may_split();
                        let lens = b.iter().map(String::len).collect::<Vec<_>>();
                        seen.lock().unwrap().push((lens, split));
                        Ok(b.iter().map(|t| t.to_uppercase()).collect())
                    },
                    |n| done.push(n),
                )
            });
            assert_eq!(out.unwrap(), vec!["A", "CCC", "BB", "DDDD", "E"]);
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            // Side by side, a batch's kernels stay on its thread; a batch alone may split.
            let paired = !side_by_side;
            let want = vec![(vec![1], true), (vec![2, 1], paired), (vec![4, 3], paired)];
            assert_eq!(seen, want, "side by side: {side_by_side}");
            assert_eq!(done, vec![2, 2, 1], "batches reported in order");
        }
    }

    #[test]
    fn a_failing_batch_fails_the_whole_run() {
        let texts: Vec<String> = ["a", "bb", "ccc", "dddd"].map(String::from).to_vec();
        let r = map_batches(
            &texts,
            1,
            true,
            |b| match b[0].len() {
                2 => Err(crate::error::WickError::Unsupported("bb".into())),
                _ => Ok(vec![()]),
            },
            |_| {},
        );
        assert!(r.is_err());
    }
}

//! Batching texts of different lengths for the tasks: longest first, so each batch
//! holds similar lengths (padding itself is [`crate::data::pad_batch`]).

/// Runs `f` over the texts in batches of `batch_size`, longest texts first so each batch
/// holds similar lengths (less padding, as sentence-transformers does), and returns the
/// results in input order. `on_batch(n)` is told how many texts each batch finished.
pub fn map_batches<T>(
    texts: &[String],
    batch_size: usize,
    mut f: impl FnMut(&[String]) -> crate::error::Result<Vec<T>>,
    mut on_batch: impl FnMut(usize),
) -> crate::error::Result<Vec<T>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let mut out: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        for (&i, r) in chunk.iter().zip(f(&batch)?) {
            out[i] = Some(r);
        }
        on_batch(chunk.len());
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every text batched"))
        .collect())
}

/// [`map_batches`] with a progress bar on stderr (when there is more than one batch):
/// `what` names the work.
pub fn map_batches_shown<T>(
    texts: &[String],
    batch_size: usize,
    what: &str,
    f: impl FnMut(&[String]) -> crate::error::Result<Vec<T>>,
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
    let out = map_batches(texts, batch_size, f, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn batches_by_length_and_restores_order() {
        let texts: Vec<String> = ["a", "ccc", "bb", "dddd", "e"].map(String::from).to_vec();
        let mut sizes = vec![];
        let out = map_batches(
            &texts,
            2,
            |b| {
                sizes.push(b.iter().map(String::len).collect::<Vec<_>>());
                Ok(b.iter().map(|t| t.to_uppercase()).collect())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(out, vec!["A", "CCC", "BB", "DDDD", "E"]);
        assert_eq!(sizes, vec![vec![4, 3], vec![2, 1], vec![1]]);
    }
}

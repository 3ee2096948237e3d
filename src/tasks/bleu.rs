//! Corpus BLEU exactly as sacreBLEU computes it by default: the `13a` tokenisation
//! (mteval-v13a's), clipped n-gram matches up to 4-grams summed over the corpus, the
//! brevity penalty, and the `exp` smoothing for orders with no match. One reference per
//! hypothesis. Scores are on sacreBLEU's 0–100 scale.

use std::collections::HashMap;

use serde::Serialize;

/// sacreBLEU's `13a` tokeniser.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // Punctuation and symbols become tokens of their own.
    let symbol =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut s: Vec<char> = Vec::with_capacity(line.len() * 2);
    s.push(' ');
    for c in line.chars() {
        if symbol(c) {
            s.extend([' ', c, ' ']);
        } else {
            s.push(c);
        }
    }
    s.push(' ');
    let digit = |c: char| c.is_ascii_digit();
    let period = |c: char| c == '.' || c == ',';
    // Each pass is one regex substitution: left to right, matches do not overlap.
    let pass =
        |s: Vec<char>, hit: &dyn Fn(char, char) -> bool, out: &dyn Fn(char, char) -> Vec<char>| {
            let mut r = Vec::with_capacity(s.len() + 16);
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && hit(s[i], s[i + 1]) {
                    r.extend(out(s[i], s[i + 1]));
                    i += 2;
                } else {
                    r.push(s[i]);
                    i += 1;
                }
            }
            r
        };
    // Periods and commas, unless between digits; a dash after a digit.
    let s = pass(s, &|a, b| !digit(a) && period(b), &|a, b| {
        vec![a, ' ', b, ' ']
    });
    let s = pass(s, &|a, b| period(a) && !digit(b), &|a, b| {
        vec![' ', a, ' ', b]
    });
    let s = pass(s, &|a, b| digit(a) && b == '-', &|a, b| {
        vec![a, ' ', b, ' ']
    });
    s.into_iter()
        .collect::<String>()
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bleu {
    pub score: f64,
    /// Modified n-gram precisions, 1- to 4-grams, in percent.
    pub precisions: [f64; 4],
    pub brevity_penalty: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    for w in tokens.windows(n) {
        *m.entry(w).or_default() += 1;
    }
    m
}

/// Corpus BLEU of `hypotheses` against one reference each.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> Bleu {
    let (mut correct, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut sys_len, mut ref_len) = (0, 0);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (tokenize_13a(h), tokenize_13a(r));
        sys_len += h.len();
        ref_len += r.len();
        for n in 1..=4 {
            let refs = ngrams(&r, n);
            for (g, c) in ngrams(&h, n) {
                correct[n - 1] += c.min(refs.get(g).copied().unwrap_or(0));
                total[n - 1] += c;
            }
        }
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; 4];
    if correct.iter().all(|&c| c == 0) {
        return Bleu {
            score: 0.0,
            precisions,
            brevity_penalty: bp,
            sys_len,
            ref_len,
        };
    }
    let mut smooth = 1.0;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // sacreBLEU's my_log: log(0) is a very large negative number, so the score is 0.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let score = bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp();
    Bleu {
        score,
        precisions,
        brevity_penalty: bp,
        sys_len,
        ref_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_13a() {
        assert_eq!(
            tokenize_13a("Hello, world! It's 3.5 km-long (ok).").join(" "),
            "Hello , world ! It's 3.5 km-long ( ok ) ."
        );
        assert_eq!(tokenize_13a("1-2 a&amp;b").join(" "), "1 - 2 a & b");
    }

    #[test]
    fn identical_corpus_scores_100_and_empty_scores_0() {
        let s = vec!["the cat sat on the mat .".to_string()];
        assert!((corpus_bleu(&s, &s).score - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&["".into()], &s).score, 0.0);
    }
}

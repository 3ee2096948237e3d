//! Reading a corpus: a plain text file, a folder of .txt files, or JSONL with a `text`
//! field. Each file (or JSONL line) is a document.

use std::path::{Path, PathBuf};

use crate::error::{Result, WickError};

fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        WickError::Unsupported(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Files that make up the corpus at `path`, in a stable order.
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| WickError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(WickError::Unsupported(format!(
                "{}: folder has no .txt files",
                path.display()
            )));
        }
        Ok(files)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(WickError::MissingFile {
            path: path.to_path_buf(),
            what: "training data".into(),
        })
    }
}

/// The documents of a corpus. Errors on non-UTF-8 bytes, malformed JSONL and an empty
/// corpus, naming the file.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for file in corpus_files(path)? {
        let text = read_utf8(&file)?;
        if file.extension().is_some_and(|x| x == "jsonl") {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    WickError::Unsupported(format!("{}:{}: not JSON: {e}", file.display(), i + 1))
                })?;
                let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                    WickError::Unsupported(format!(
                        "{}:{}: no string field `text`",
                        file.display(),
                        i + 1
                    ))
                })?;
                docs.push(t.to_string());
            }
        } else {
            docs.push(text);
        }
    }
    if docs.iter().all(|d| d.trim().is_empty()) {
        return Err(WickError::Unsupported(format!(
            "{}: the corpus is empty",
            path.display()
        )));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_jsonl_and_folders_and_rejects_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("a.txt"), "hello").unwrap();
        std::fs::write(p.join("b.txt"), "world").unwrap();
        assert_eq!(read_documents(p).unwrap(), vec!["hello", "world"]);
        std::fs::write(
            p.join("c.jsonl"),
            "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n",
        )
        .unwrap();
        assert_eq!(
            read_documents(&p.join("c.jsonl")).unwrap(),
            vec!["one", "two"]
        );
        std::fs::write(p.join("bad.jsonl"), "{\"txt\": 1}\n").unwrap();
        assert!(read_documents(&p.join("bad.jsonl"))
            .unwrap_err()
            .to_string()
            .contains("bad.jsonl:1"));
        std::fs::write(p.join("empty.txt"), "  \n").unwrap();
        assert!(read_documents(&p.join("empty.txt"))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::write(p.join("latin1.txt"), [b'a', 0xe9, b'b']).unwrap();
        let e = read_documents(&p.join("latin1.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("latin1.txt") && e.contains("not UTF-8") && e.contains("offset 1"),
            "{e}"
        );
        assert!(read_documents(&p.join("missing.txt")).is_err());
    }
}

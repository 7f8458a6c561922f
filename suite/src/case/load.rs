//! Reading case files: a directory of YAML files, or the table embedded in the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::check::validate;
use super::{Case, CaseDoc, LoadError};

/// The table embedded in the binary: `(path relative to cases/, contents)`.
pub fn embedded_files() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/embedded_cases.rs"))
}

/// Loads and validates the embedded table.
pub fn load_embedded() -> Result<Vec<Case>, LoadError> {
    load_files(
        embedded_files()
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string())),
    )
}

/// Reads every `*.yaml` / `*.yml` file below `dir` (sorted) as `(display path, contents)`.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            Ok((path.display().to_string(), text))
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses and validates files; ids must be unique across all of them.
pub fn load_files(
    files: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Case>, LoadError> {
    let mut cases = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in files {
        let docs: Vec<Spanned<CaseDoc>> =
            serde_saphyr::from_str(&text).map_err(|e| LoadError::Parse {
                file: file.clone(),
                message: e.to_string(),
            })?;
        for doc in docs {
            let line = doc.referenced.line();
            let case = validate(&file, line, doc.value)?;
            if let Some(first) = seen.get(&case.id) {
                return Err(LoadError::DuplicateId {
                    file,
                    line,
                    id: case.id,
                    first: first.clone(),
                });
            }
            seen.insert(case.id.clone(), case.origin.clone());
            cases.push(case);
        }
    }
    Ok(cases)
}

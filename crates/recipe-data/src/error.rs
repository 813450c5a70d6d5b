//! Data errors name the file and, where there is one, the line.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
}

impl DataError {
    pub fn new(message: impl Into<String>) -> DataError {
        DataError { file: None, line: None, message: message.into() }
    }
    pub fn in_file(file: &Path, message: impl Into<String>) -> DataError {
        DataError { file: Some(file.to_path_buf()), line: None, message: message.into() }
    }
    pub fn at_line(file: &Path, line: usize, message: impl Into<String>) -> DataError {
        DataError { file: Some(file.to_path_buf()), line: Some(line), message: message.into() }
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: {}", file.display(), self.message),
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DataError {}

pub type Result<T> = std::result::Result<T, DataError>;

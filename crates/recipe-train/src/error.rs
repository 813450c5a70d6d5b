//! Training errors: what went wrong, with the data, model or I/O error beneath.

#[derive(Debug)]
pub enum Error {
    Data(recipe_data::DataError),
    Candle(candle_core::Error),
    Io(String),
    /// Something the recipe asks for that cannot run here, or a failed run.
    Run(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Data(e) => write!(f, "{e}"),
            Error::Candle(e) => write!(f, "tensor error: {e}"),
            Error::Io(e) | Error::Run(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

impl From<recipe_data::DataError> for Error {
    fn from(e: recipe_data::DataError) -> Self {
        Error::Data(e)
    }
}

impl From<recipe_checkpoint::training::Error> for Error {
    fn from(e: recipe_checkpoint::training::Error) -> Self {
        Error::Io(e.0)
    }
}

impl From<recipe_dist::Error> for Error {
    fn from(e: recipe_dist::Error) -> Self {
        Error::Run(e.0)
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

/// An I/O error with the path it concerns.
pub fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", path.display()))
}

pub type Result<T> = std::result::Result<T, Error>;

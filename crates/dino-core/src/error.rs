use std::fmt;

/// The one error type of the libraries. Every variant names what is at fault: a file, a metadata
/// key, a tensor, a field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A malformed file: `context` names the file and key or tensor at fault.
    #[error("{context}: {msg}")]
    Format { context: String, msg: String },
    /// A metadata key the model needs is absent.
    #[error("{context}: missing metadata key '{key}'")]
    MissingKey { context: String, key: String },
    /// A tensor type Dino cannot compute with.
    #[error("tensor '{tensor}': unsupported tensor type {ty}")]
    UnsupportedType { tensor: String, ty: String },
    /// A tensor whose shape does not match what the model expects.
    #[error("tensor '{tensor}': expected shape {expected:?}, found {found:?}")]
    Shape {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    /// A request that cannot be served as asked (prompt too long, bad parameter, ...).
    #[error("{0}")]
    Invalid(String),
    /// An unsupported feature or model.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub fn format(context: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::Format {
            context: context.to_string(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

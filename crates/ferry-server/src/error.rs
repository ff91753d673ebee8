use ferry_store::StoreError;

/// Why the server could not start or an operation failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("runtime: {0}")]
    Runtime(#[from] ferry_runtime::RuntimeError),
    #[error("proxy: {0}")]
    Proxy(String),
    /// A setting the server was started with is out of range (names the flag).
    #[error("{0}")]
    Config(String),
    /// Another live server uses this server's `--server-id`.
    #[error(transparent)]
    DuplicateServerId(#[from] crate::leader::DuplicateServerId),
    /// Stored state that cannot be read back (a bug or a hand-edited database).
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

impl ServerError {
    pub fn io(context: String, source: std::io::Error) -> Self {
        ServerError::Io { context, source }
    }
}

/// An error and its causes on one line ("error sending request: invalid peer certificate…"):
/// reqwest's own message hides the cause that explains it.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

//! The crate's error type.

/// Everything that can go wrong, each with a message that names the problem.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Loss text that does not parse: unknown names, keys or values.
    #[error("cannot parse loss '{text}': {msg}")]
    Parse {
        /// The text that failed.
        text: String,
        /// What is wrong, with what is allowed.
        msg: String,
    },
    /// Metric text that does not parse, or a metric that does not fit the mode or the classes.
    #[error("bad metric '{text}': {msg}")]
    Metric {
        /// The text that failed.
        text: String,
        /// What is wrong, with what is allowed.
        msg: String,
    },
    /// A loss that does not fit the mode or the number of classes.
    #[error("{loss}: {msg}")]
    LossMode {
        /// The loss's name.
        loss: String,
        /// What is wrong.
        msg: String,
    },
    /// Shapes that do not fit together, or an empty tensor.
    #[error("shape error: {0}")]
    Shape(String),
    /// NaN or infinite logits.
    #[error("non-finite logits: {0}")]
    NonFinite(String),
    /// A class index outside `0..C` that is not the ignore index.
    #[error("class index out of range: {0}")]
    ClassIndex(String),
    /// A dense target outside [0, 1], or soft labels where hard ones are needed.
    #[error("bad target value: {0}")]
    TargetValue(String),
    /// Other input problems (dtype, mode).
    #[error("bad input: {0}")]
    Input(String),
    /// No GPU adapter could be opened.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// A loss or option this engine cannot evaluate.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A failure reported by the GPU or the driver.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A buffer an evaluation needs exceeds a limit of the device (binding size, buffer size,
    /// workgroups per dimension). A caller can split the input and try again.
    #[error("device limit: {what} needs {needed}, the device allows {max}")]
    Limit {
        /// What exceeds the limit.
        what: String,
        /// How much it needs (bytes, or workgroups).
        needed: u64,
        /// The device's limit.
        max: u64,
    },
    /// A loss value outside the f32 range, or (on a GPU, which adds the elements' losses in
    /// f32) a sum on the way to it: logits near f32's largest can overflow the sum of a mean
    /// that fits, where the f64 reference gives the value.
    #[error("overflow: {0}")]
    Overflow(String),
    /// A caller's buffer that cannot be used as given (usage, size, alignment, overlap).
    #[error("bad buffer: {0}")]
    Buffer(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

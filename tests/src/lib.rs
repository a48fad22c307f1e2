//! Cross-crate and multi-process tests live in `tests/`; helper binaries in `src/bin`.

//! Persistence for warmpool (work in progress).

//! Training: the optimizer and the step that trains plugin parameters through
//! the host's autodiff.

pub mod optim;

//! Diffusion maths: noise schedules (and, with the engine, objectives and
//! samplers). Every formula is a small function with its equation written in
//! its doc comment.

pub mod schedule;

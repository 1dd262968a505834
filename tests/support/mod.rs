//! Loopback servers and a real HTTP client for whole-stack tests.
#![allow(dead_code)] // each test binary uses its own part of this module

mod calls;
mod client;
mod server;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use calls::Calls;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use client::{Client, Reply};
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use server::{serve_axum, serve_hyper};
#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use jwt::{bearer, bearer_with_scopes, jwt};
#[cfg(all(feature = "auth", feature = "usage"))]
mod steps;
#[cfg(all(feature = "auth", feature = "usage"))]
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use steps::{counting_authorizer, KeyedPlan, ALICE, MALLORY};

//! The stub kube-apiserver lives in the e2e harness, shared with weft-cni's
//! tests and the pods' CNI mode.
#![allow(unused_imports)]

pub use weft_e2e::apiserver::*;

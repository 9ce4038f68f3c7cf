//! Types, service traits and client generated from the repository's
//! `proto/grpc_service.proto` (package `inference`, Triton-compatible field
//! numbers) by `build.rs`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("inference");

/// The compiled descriptor set of the `inference` package.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

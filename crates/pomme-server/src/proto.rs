//! Types and service traits generated from `proto/grpc_service.proto`
//! (package `inference`, Triton-compatible field numbers).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("inference");

/// The compiled descriptor set of the `inference` package.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

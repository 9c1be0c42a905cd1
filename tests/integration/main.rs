//! One integration-test binary for hound: the real `hound` binary against a real etcd.

mod support;

mod access;
mod bad_input;
mod cli;
mod events;
mod faults;
mod monitor;
mod register;
mod rest;
mod shutdown;
mod validation;

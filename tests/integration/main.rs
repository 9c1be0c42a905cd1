//! One integration-test binary for hound: the real `hound` binary against a real etcd.

mod support;

mod access;
mod bad_input;
mod cli;
mod describe;
mod discovery;
mod dns;
mod election;
mod events;
mod failover;
mod faults;
mod flood;
mod health;
mod limits;
mod metrics;
mod monitor;
mod naming;
mod register;
mod registrations;
mod resilience;
mod rest;
mod scenarios;
mod secure_etcd;
mod shutdown;
mod source_port;
mod validation;

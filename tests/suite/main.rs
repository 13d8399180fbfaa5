//! Integration tests of the whole suite, one module per topic (one test binary, so the
//! suite's crates are linked once).

mod harness;

mod api_keys;
mod auth;
mod chat;
mod chat_edge;
mod cli;
mod console;
mod content;
mod cors;
mod edge_http;
mod error_details;
mod fake_llm;
mod faults;
mod health;
mod lifecycle;
mod metrics_guard;
mod migrations;
mod observability;
mod ratelimit;
mod security;
mod shutdown;
mod slow_clients;
mod tls;
mod transcoder;
